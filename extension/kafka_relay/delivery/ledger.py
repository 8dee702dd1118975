"""The ledger: the single owner of every accepted record until it settles.

It owns the unsettled records and their bytes, the send queue, the journal, the
counts and the ``wait=delivered`` watches, and the one condition variable that
guards them all (the pump waits on it too). Waiting for outcomes and for idleness are its
methods; recovering and releasing the journal (delivery/recovery.py) and moving the outage
spool (delivery/outage.py) take its lock like them. With a journal, every batch it takes is
journaled before it is owned (before the 202), and every settlement tells it; a batch it
cannot journal is refused. Which records keep their key and value in memory meanwhile is
``resident``'s (delivery/resident.py); ``warm`` reads them back for whoever hands records on
and gives up, loudly, any whose bytes are gone. With an outage spool
(delivery/overflow.py), a batch that does not fit in memory waits there, in order, and
comes back as memory frees up (delivery/outage.py).
The invariant it keeps:
accepted + restored == delivered + dead_lettered + spilled + spooled + pending.
It also tallies these counts per request id (the records' own, the invocation that
handed them over), so the logs can say what became of each invocation's records.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from kafka_relay.delivery.journal import Journal, JournalUnwritable, encode_batch
from kafka_relay.delivery.overflow import OverflowSpool, SpoolFull
from kafka_relay.delivery.queue import SendQueue, in_flight_window
from kafka_relay.delivery.resident import Resident
from kafka_relay.delivery.rings import Entry, Rings
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import Outcome, Refusal
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillResult


class Spill(Protocol):
    def __call__(self, records: Sequence[Record], *, reason: str,
                 retry_later: bool = True) -> SpillResult: ...


class BufferFull(Exception):
    """Nothing was accepted; ``refusal`` says why (and so the answer's status).
    ``retry_after_ms == 0``: retrying cannot help."""

    def __init__(self, retry_after_ms: int, detail: str,
                 refusal: Refusal = Refusal.BUSY) -> None:
        super().__init__(detail)
        self.retry_after_ms = retry_after_ms
        self.refusal = refusal


class Limits(NamedTuple):
    records: int
    bytes: int


class Counts:
    def __init__(self) -> None:
        self.accepted = 0
        self.restored = 0
        self.delivered = 0
        self.dead_lettered = 0
        self.spilled = 0
        self.spooled = 0  # parked in /tmp for a later invocation; comes back as ``restored``
        self.rejected = 0
        self.dead_letter_failed = 0  # routed to the DLQ, which did not take them: spilled
        self.retries = 0
        self.producers_built = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# The per-request tally's key for records that arrived without a request id.
NO_REQUEST = "-"
_OUTCOME_COUNT = {Outcome.DELIVERED: "delivered", Outcome.DEAD_LETTERED: "dead_lettered"}


def _tally(outcomes: dict[str, dict[str, int]], records: Iterable[Record], count: str) -> None:
    """Count ``records`` under ``count`` for the request ids they carry (a batch mostly
    carries one: counted per run of the same id, not per record)."""
    request_id: str | None = None
    run = 0
    for record in records:
        if record.request_id != request_id or not run:
            if run:
                _add(outcomes, request_id, count, run)
            request_id, run = record.request_id, 0
        run += 1
    if run:
        _add(outcomes, request_id, count, run)


def _add(outcomes: dict[str, dict[str, int]], request_id: str | None, count: str,
         records: int) -> None:
    tally = outcomes.setdefault(request_id or NO_REQUEST, {})
    tally[count] = tally.get(count, 0) + records


def _log_outcomes(log: JsonLogger, records: Iterable[Record], count: str,
                  detail: str | None) -> None:
    """Each record's place, by id."""
    for record in records:
        where = {"delivered": record.topic, "dead_lettered": record.dlq_topic}
        log.debug("record.outcome", id=record.id, request_id=record.request_id, outcome=count,
                  where=where.get(count, detail))


class Watch:
    __slots__ = ("ids", "ledger", "outcomes")

    def __init__(self, ids: Sequence[str], ledger: "Ledger",
                 outcomes: dict[str, tuple[Outcome, str | None]] | None = None) -> None:
        self.ids = ids
        self.ledger = ledger
        self.outcomes = {} if outcomes is None else outcomes

    def wait(self, timeout_s: float) -> list[dict[str, str | None]]:
        """Per-record outcomes; records not settled in time are reported as ``pending``."""
        return self.ledger.wait_settled(self, timeout_s)


class LedgerState(NamedTuple):
    counts: dict[str, int]
    pending: int
    pending_bytes: int
    oldest_accepted_ms: int | None
    unaccounted: int  # accepted + restored - settled - pending: 0 unless a record was lost
    in_flight: int
    waiting_retry: int
    journal: dict[str, object] | None  # None: not asked for (``storage=False``)
    overflow: dict[str, object] | None
    rings: dict[str, object] | None  # the ring files held and their unsettled records
    # With ``state(take_outcomes=True)``: per request id, what changed since the last take.
    by_request: dict[str, dict[str, int]]

    def as_status(self) -> dict[str, Any]:
        return {"counts": self.counts, "pending": self.pending,
                "pending_bytes": self.pending_bytes, "unaccounted": self.unaccounted,
                "in_flight": self.in_flight, "waiting_retry": self.waiting_retry,
                "journal": self.journal, "overflow": self.overflow, "rings": self.rings}


def _status(storage: Journal | OverflowSpool | None) -> dict[str, object]:
    return {"enabled": False} if storage is None else storage.status()


def _never_fits(records: int, size: int, limits: Limits) -> str:
    over = (f"{records} records > the {limits.records}-record limit "
            "(KAFKA_RELAY_MAX_BUFFER_RECORDS)" if records > limits.records else
            f"{size} bytes > the {limits.bytes}-byte limit (KAFKA_RELAY_MAX_BUFFER_BYTES)")
    return (f"this batch alone is over the whole buffer ({over}): it can never be accepted; "
            "send it in smaller batches")


def _full(records: int, size: int, limits: Limits) -> str:
    return (f"buffer full ({records} records, {size} bytes pending; limits {limits.records} "
            f"records (KAFKA_RELAY_MAX_BUFFER_RECORDS), {limits.bytes} bytes "
            "(KAFKA_RELAY_MAX_BUFFER_BYTES))")


class Ledger:
    def __init__(self, limits: Limits, *, retry_after_ms: int,
                 monotonic: Callable[[], float] = time.monotonic,
                 journal: Journal | None = None, logger: JsonLogger | None = None,
                 overflow: OverflowSpool | None = None) -> None:
        # One condition guards everything below; the pump waits on it for work.
        self.cond = threading.Condition()
        self.queue = SendQueue()
        self.counts = Counts()
        self.limits = limits
        self._retry_after_ms = retry_after_ms
        self._monotonic = monotonic
        self._unsettled: dict[str, Record] = {}
        self._bytes = 0
        self._watches: dict[str, Watch] = {}
        self._closed: str | None = None  # why no more records are accepted
        self._journal = journal
        self.rings = Rings()  # the records that came through ring files: journaled there
        self.resident = Resident(journal, self.rings, in_flight_window(limits.bytes), logger)
        self._overflow = overflow
        self._log = logger
        # Per request id since the last state(take_outcomes=True): count name -> records.
        self._outcomes: dict[str, dict[str, int]] = {}

    # -- records in --------------------------------------------------------------------

    def accept(self, records: Sequence[Record], *, watch: bool = False,
               entry: Entry | None = None) -> Watch | None:
        """Own all of ``records`` or none (BufferFull). A batch that does not fit in memory, or
        comes while earlier ones wait there, goes to the outage spool (counted ``spooled``).
        ``entry``: the ring entry that holds them, their journal."""
        size = sum([r.size for r in records])
        ids = [r.id for r in records]
        journal, overflow = self._journal if entry is None else None, self._overflow
        # Encoded outside the lock for the journal; for the spool only once it takes the batch.
        frame = encode_batch(records, size) if journal is not None else None
        with self.cond:
            if self._closed is not None:
                raise BufferFull(0, self._closed, Refusal.CLOSED)
            if len(records) > self.limits.records or size > self.limits.bytes:
                self.counts.rejected += len(records)
                raise BufferFull(0, _never_fits(len(records), size, self.limits),
                                 Refusal.TOO_LARGE)
            full = (len(self._unsettled) + len(records) > self.limits.records
                    or self._bytes + size > self.limits.bytes)
            try:
                if overflow is not None and (full or overflow):
                    location = str(overflow.put(len(records), frame or encode_batch(records, size)))
                    self.counts.spooled += len(records)
                    self.counts.accepted += len(records)
                    if entry is not None:  # the spool holds them now: the ring is done with them
                        self.rings.add(entry, [])
                    if not watch:
                        return None
                    parked = Watch(ids, self, dict.fromkeys(ids, (Outcome.SPILLED, location)))
                    return parked
                if full:
                    raise BufferFull(self._retry_after_ms,
                                     _full(len(self._unsettled), self._bytes, self.limits))
                if frame is not None and journal is not None:
                    journal.append(ids, frame)
                    self.resident.drop_waiting(records, size, self._bytes)
                elif entry is not None:
                    self.rings.add(entry, ids)
                    self.resident.drop_waiting(records, size, self._bytes)
            except (SpoolFull, JournalUnwritable) as exc:
                self.counts.rejected += len(records)
                raise BufferFull(self._retry_after_ms, str(exc), Refusal.STORAGE) from exc
            except BufferFull:
                self.counts.rejected += len(records)
                raise
            registered = None
            if watch:
                registered = Watch(ids, self)
                self._watches.update(dict.fromkeys(ids, registered))
            self._unsettled.update(zip(ids, records, strict=True))
            self._bytes += size
            self.queue.push_all(records)
            self.counts.accepted += len(records)
            _tally(self._outcomes, records, "accepted")
            self.cond.notify_all()
            return registered

    def restore(self, records: Iterable[Record], *, recovered: int = 0,
                entry: Entry | None = None) -> int:
        """Re-own records spooled (or journaled by a dead predecessor, ``recovered`` times),
        journaled again (``entry``: in that ring entry), for a new outcome."""
        with self.cond:
            fresh = [r for r in records if r.id not in self._unsettled]
            size = sum([r.size for r in fresh])
            if entry is not None:
                self.rings.add(entry, [r.id for r in fresh])
                self.resident.drop_waiting(fresh, size, self._bytes)
            elif self._journal is not None:  # owned even when it cannot write (logged once)
                with contextlib.suppress(JournalUnwritable):
                    self._journal.append([r.id for r in fresh], encode_batch(fresh, size),
                                         recovered=recovered)
                    self.resident.drop_waiting(fresh, size, self._bytes)
            self._unsettled.update((r.id, r) for r in fresh)
            self._bytes += size
            self.queue.push_all(fresh)
            self.counts.restored += len(fresh)
            # Per request, a crashed predecessor's records are "recovered": that environment
            # counted them accepted and never settled them; a spool restore undoes a spool.
            _tally(self._outcomes, fresh, "recovered" if recovered else "restored")
            self.cond.notify_all()
            return len(fresh)

    def note_rejected(self, records: int) -> None:
        with self.cond:
            self.counts.rejected += records

    def close(self, why: str) -> None:
        """Accept nothing more; ``why`` is the answer to the next caller."""
        with self.cond:
            self._closed = self._closed or why

    # -- records out ---------------------------------------------------------------------

    def warm(self, records: list[Record], *, taken: bool = False) -> list[Record]:
        """Under the lock: ``records`` with their keys and values (read back where dropped),
        less those whose bytes cannot be read back: given up, without an outcome (counted in
        ``unaccounted``). ``taken``: they had left the queue."""
        problems = self.resident.read_back(records, self._unsettled)
        if not problems:
            return records
        pop = self._unsettled.pop
        gone = [r for r in records if r.id in problems and pop(r.id, None) is not None]
        for record in gone:
            self._watches.pop(record.id, None)
        self._bytes -= sum([r.size for r in gone])
        self.resident.released([r.id for r in gone])
        if taken:
            self.queue.done(gone)
        self.cond.notify_all()
        return [r for r in records if r.id not in problems]

    @property
    def unsettled(self) -> Mapping[str, Record]:
        """By id. Read without the lock (a lookup is atomic; the answer may change after)."""
        return self._unsettled

    def settle_spilled(self, records: Sequence[Record], result: SpillResult) -> None:
        self.settle(records, Outcome.SPILLED, result.location, spooled=result.spooled)

    def settle(self, records: Sequence[Record], outcome: Outcome, detail: str | None = None,
               *, spooled: bool = False) -> int:
        """Settle those still unsettled, in one lock round and one notify; how many (a late
        report of a spilled one is no second count). ``detail``: where they were spilled
        (a dead-lettered record's is its DLQ error)."""
        with self.cond:
            pop = self._unsettled.pop
            settled = [r for r in records if pop(r.id, None) is not None]
            if not settled:
                return 0
            self.resident.released([r.id for r in settled])
            self._bytes -= sum([r.size for r in settled])
            count = _OUTCOME_COUNT.get(outcome) or ("spooled" if spooled else "spilled")
            setattr(self.counts, count, getattr(self.counts, count) + len(settled))
            _tally(self._outcomes, settled, count)
            if self._log is not None and self._log.enabled("DEBUG"):  # off by default
                _log_outcomes(self._log, settled, count, detail)
            if self._watches:
                dead_lettered = outcome is Outcome.DEAD_LETTERED
                for record in settled:
                    watch = self._watches.pop(record.id, None)
                    if watch is not None:
                        watch.outcomes[record.id] = (
                            outcome, record.dlq_error if dead_lettered else detail)
            self.cond.notify_all()
            return len(settled)

    def spill_unsettled(self, spill: Spill, reason: str) -> int:
        """Spill everything unsettled. A late delivery report of one of them is a duplicate
        under the same x-relay-id, never a second count."""
        with self.cond:
            self.resident.dropping = False  # spilled outside the lock: their bytes stay
            records = self.warm(list(self._unsettled.values()))
        if records:
            self.settle_spilled(records, spill(records, reason=reason, retry_later=False))
        return len(records)

    def requeue_unsettled(self) -> None:
        """After a producer rebuild: whatever is not queued (its report never came) goes again."""
        with self.cond:
            self.queue.requeue_missing(self._unsettled.values())
            self.cond.notify_all()

    # -- reading and waiting ------------------------------------------------------------

    def state(self, *, take_outcomes: bool = False, storage: bool = True) -> LedgerState:
        """A snapshot; ``take_outcomes`` also hands over (and restarts) the per-request tally
        in the same lock round, so the two agree. ``storage=False`` (what each invocation
        reads): without the journal's, spool's and rings' status (dicts, the journal's
        O(records))."""
        with self.cond:
            by_request: dict[str, dict[str, int]] = {}
            if take_outcomes and self._outcomes:
                by_request, self._outcomes = self._outcomes, {}
            c = self.counts
            settled = c.delivered + c.dead_lettered + c.spilled + c.spooled
            oldest = next(iter(self._unsettled.values()), None)  # dicts keep insertion order
            return LedgerState(
                counts=c.as_dict(), pending=len(self._unsettled), pending_bytes=self._bytes,
                oldest_accepted_ms=None if oldest is None else oldest.accepted_ms,
                unaccounted=c.accepted + c.restored - settled - len(self._unsettled),
                in_flight=self.queue.in_flight, waiting_retry=self.queue.waiting_retry(),
                journal=_status(self._journal) if storage else None,
                overflow=_status(self._overflow) if storage else None,
                rings=self.rings.status() if storage else None,
                by_request=by_request)

    def wait_idle(self, deadline: float, *, now_ms: Callable[[], int],
                  stopped: Callable[[], bool], retry_now: bool = False,
                  more: Callable[[], int] = lambda: 0) -> None:
        """Ask the pump to flush, and wait until nothing is due (nor ``more`` taken: the outage
        spool's refill), the pump ``stopped`` or ``deadline`` (monotonic) passed.
        ``retry_now`` also sends the records still waiting out a retry backoff."""
        with self.cond:
            if retry_now:
                self.queue.release_retries()
            self.queue.flush_requests += 1
            self.cond.notify_all()
            try:
                while (not stopped() and (self.queue.has_due_work(now_ms()) or more())
                       and self._monotonic() < deadline):
                    self.cond.wait(min(0.05, max(0.001, deadline - self._monotonic())))
            finally:
                self.queue.flush_requests -= 1

    def wait_settled(self, watch: Watch, timeout_s: float) -> list[dict[str, str | None]]:
        """Per-record outcomes; records not settled in time are reported as ``pending``."""
        deadline = self._monotonic() + timeout_s
        with self.cond:
            self.queue.flush_requests += 1
            self.cond.notify_all()  # a pump between unwatched rounds flushes now
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
