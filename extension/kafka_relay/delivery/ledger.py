"""The ledger: the single owner of every accepted record until it settles.

It holds the unsettled records and their bytes, the send queue, the counts and
the ``wait=delivered`` watches, all under one condition variable that the pump
and the callers of the engine share. With a journal, every batch it takes is
journaled before it is owned (before the 202), and every settlement tells it.
The invariant it keeps:
accepted + restored == delivered + dead_lettered + spilled + spooled + pending.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kafka_relay.delivery.journal import Journal, JournalUnwritable, encode
from kafka_relay.delivery.queue import SendQueue
from kafka_relay.protocol import Outcome, Refusal
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillResult


class BufferFull(Exception):
    """Nothing was accepted; ``refusal`` says why (and so the answer's status).
    ``retry_after_ms == 0``: retrying cannot help."""

    def __init__(self, retry_after_ms: int, detail: str,
                 refusal: Refusal = Refusal.BUSY) -> None:
        super().__init__(detail)
        self.retry_after_ms = retry_after_ms
        self.refusal = refusal


@dataclass(frozen=True)
class Limits:
    records: int
    bytes: int


@dataclass
class Counts:
    accepted: int = 0
    restored: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    spilled: int = 0
    spooled: int = 0  # parked in /tmp for a later invocation; comes back as ``restored``
    rejected: int = 0
    retries: int = 0
    producers_built: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Watch:
    ids: Sequence[str]
    outcomes: dict[str, tuple[Outcome, str | None]] = field(default_factory=dict)


def _never_fits(records: int, size: int, limits: Limits) -> str:
    over = (f"{records} records > the {limits.records}-record limit "
            "(KAFKA_RELAY_MAX_BUFFER_RECORDS)" if records > limits.records else
            f"{size} bytes > the {limits.bytes}-byte limit (KAFKA_RELAY_MAX_BUFFER_BYTES)")
    return (f"this batch alone is over the whole buffer ({over}): it can never be accepted; "
            "send it in smaller batches")


class Ledger:
    def __init__(self, limits: Limits, *, retry_after_ms: int,
                 monotonic: Callable[[], float] = time.monotonic,
                 journal: Journal | None = None) -> None:
        self.cond = threading.Condition()
        self.queue = SendQueue()  # guarded by ``cond`` too
        self.counts = Counts()
        self.limits = limits
        self._retry_after_ms = retry_after_ms
        self._monotonic = monotonic
        self._unsettled: dict[str, Record] = {}
        self._bytes = 0
        self._watches: dict[str, Watch] = {}
        self._closed: str | None = None  # why no more records are accepted
        self.journal = journal  # guarded by ``cond`` too

    # -- records in --------------------------------------------------------------------

    def accept(self, records: Sequence[Record], *, watch: bool = False,
               park: Callable[[Sequence[Record]], str] | None = None,
               park_first: bool = False) -> Watch | None:
        """Own all of ``records`` or none (BufferFull). ``park`` (the disk spool): called
        instead of refusing a batch that does not fit in memory, or first (``park_first``,
        when earlier batches wait there); it returns where the batch went or raises
        BufferFull. A parked batch is accepted and counted ``spooled``."""
        size = sum(r.size for r in records)
        journal = self.journal
        with self.cond:
            if self._closed is not None:
                raise BufferFull(0, self._closed, Refusal.CLOSED)
            if len(records) > self.limits.records or size > self.limits.bytes:
                self.counts.rejected += len(records)
                raise BufferFull(0, _never_fits(len(records), size, self.limits),
                                 Refusal.TOO_LARGE)
            if park is not None and (park_first or not self.room_for(len(records), size)):
                return self._park(records, park, watch=watch)
        frame = encode(records) if journal is not None else None  # unlocked
        with self.cond:
            if self._closed is not None:
                raise BufferFull(0, self._closed, Refusal.CLOSED)
            if not self.room_for(len(records), size):
                if park is not None:
                    return self._park(records, park, watch=watch)
                self.counts.rejected += len(records)
                raise BufferFull(
                    self._retry_after_ms,
                    f"buffer full ({len(self._unsettled)} records, {self._bytes} bytes pending; "
                    f"limits {self.limits.records} records (KAFKA_RELAY_MAX_BUFFER_RECORDS), "
                    f"{self.limits.bytes} bytes (KAFKA_RELAY_MAX_BUFFER_BYTES))",
                )
            if frame is not None and journal is not None:
                try:
                    journal.append([r.id for r in records], frame)
                except JournalUnwritable as exc:
                    self.counts.rejected += len(records)
                    raise BufferFull(self._retry_after_ms, str(exc), Refusal.STORAGE) from exc
            registered = None
            if watch:
                registered = Watch([r.id for r in records])
                self._watches.update((i, registered) for i in registered.ids)
            self._take(records)
            self.counts.accepted += len(records)
            self.cond.notify_all()
            return registered

    def room_for(self, records: int, size: int) -> bool:
        with self.cond:
            return (len(self._unsettled) + records <= self.limits.records
                    and self._bytes + size <= self.limits.bytes)

    def _park(self, records: Sequence[Record], park: Callable[[Sequence[Record]], str],
              *, watch: bool) -> Watch | None:
        try:
            location = park(records)
        except BufferFull:
            self.counts.rejected += len(records)
            raise
        self.counts.accepted += len(records)
        self.counts.spooled += len(records)
        if not watch:
            return None
        parked = Watch([r.id for r in records])
        parked.outcomes.update((r.id, (Outcome.SPILLED, location)) for r in records)
        return parked

    def restore(self, records: Iterable[Record], *, recovered: int = 0) -> int:
        """Re-own records spooled (or journaled by a dead predecessor, ``recovered`` times);
        they are journaled again and get a new outcome. They are owned even when the journal
        cannot write (they come from disk, where the caller keeps them: ``journal.error``)."""
        with self.cond:
            fresh = [r for r in records if r.id not in self._unsettled]
            if self.journal is not None:
                with contextlib.suppress(JournalUnwritable):  # logged, shown in the status
                    self.journal.append([r.id for r in fresh], encode(fresh),
                                        recovered=recovered)
            self._take(fresh)
            self.counts.restored += len(fresh)
            self.cond.notify_all()
            return len(fresh)

    def _take(self, records: Iterable[Record]) -> None:
        for record in records:
            self._unsettled[record.id] = record
            self._bytes += record.size
            self.queue.push(record)

    def note_rejected(self, records: int) -> None:
        with self.cond:
            self.counts.rejected += records

    def close(self, why: str) -> None:
        """Accept nothing more; ``why`` is the answer to the next caller."""
        with self.cond:
            self._closed = self._closed or why

    # -- records out ---------------------------------------------------------------------

    def holds(self, record: Record) -> bool:
        # No lock: one dict lookup is atomic, and the answer may change right after either way.
        return record.id in self._unsettled

    def settle(self, record: Record, outcome: Outcome, detail: str | None,
               *, spooled: bool = False, notify: bool = True) -> bool:
        """``detail``: the error that sent it to the DLQ, or where it was spilled. False when
        it had settled already (e.g. spilled, then a late delivery report). ``notify=False``:
        the caller notifies the waiters itself (once per batch, not per record)."""
        with self.cond:
            if self._unsettled.pop(record.id, None) is None:
                return False
            if self.journal is not None:
                self.journal.settled(record.id)
            self._bytes -= record.size
            if outcome is Outcome.DELIVERED:
                self.counts.delivered += 1
            elif outcome is Outcome.DEAD_LETTERED:
                self.counts.dead_lettered += 1
            elif spooled:
                self.counts.spooled += 1
            else:
                self.counts.spilled += 1
            watch = self._watches.pop(record.id, None)
            if watch is not None:
                watch.outcomes[record.id] = (outcome, detail)
            if notify:
                self.cond.notify_all()
            return True

    def settle_spilled(self, records: Iterable[Record], result: SpillResult) -> None:
        with self.cond:
            for record in records:
                self.settle(record, Outcome.SPILLED, result.location, spooled=result.spooled)

    def unsettled(self) -> list[Record]:
        with self.cond:
            return list(self._unsettled.values())

    def requeue_unsettled(self) -> None:
        """After a producer rebuild: whatever is not queued (its report never came) goes again."""
        with self.cond:
            self.queue.requeue_missing(self._unsettled.values())
            self.cond.notify_all()

    # -- reading -------------------------------------------------------------------------

    def depth(self) -> tuple[int, int]:
        with self.cond:
            return len(self._unsettled), self._bytes

    def oldest_accepted_ms(self) -> int | None:
        """When the oldest unsettled record was accepted (dicts keep insertion order)."""
        with self.cond:
            for record in self._unsettled.values():
                return record.accepted_ms
            return None

    def unaccounted(self) -> int:
        """accepted + restored - settled - pending: 0 unless a record was lost."""
        with self.cond:
            c = self.counts
            settled = c.delivered + c.dead_lettered + c.spilled + c.spooled
            return c.accepted + c.restored - settled - len(self._unsettled)

    def wait_settled(self, watch: Watch, timeout_s: float) -> list[dict[str, str | None]]:
        """Per-record outcomes; records not settled in time are reported as ``pending``."""
        deadline = self._monotonic() + timeout_s
        with self.cond:
            self.queue.flush_requests += 1
            try:
                while len(watch.outcomes) < len(watch.ids):
                    remaining = deadline - self._monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(min(remaining, 0.1))
            finally:
                self.queue.flush_requests -= 1
                for record_id in watch.ids:
                    self._watches.pop(record_id, None)
            pending = (Outcome.PENDING, None)
            return [{"id": i, "outcome": outcome.value, "error": detail}
                    for i in watch.ids
                    for outcome, detail in [watch.outcomes.get(i, pending)]]
