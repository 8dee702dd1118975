"""Each (topic, key)'s records in acceptance order across failures, for the send queue: a
record that waits (out a retry's backoff, or put back) holds its key's later records back
until it goes, and goes ahead of them. Records of other keys go on. Not thread-safe: the
ledger's condition guards it (through ``SendQueue``)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain, islice

from kafka_relay.record import Record

OrderKey = tuple[str, bytes]

# Batches taken are logged until a failure reads their ranks back. Past twice what is in
# flight and this many records, the oldest batches leave the log (it keeps delivered records
# alive meanwhile): a record of theirs still in flight that fails ranks behind what was read
# back before and ahead of what is logged (ties by when they failed: their report order).
_LOG_SLACK = 1024


def order_key(record: Record) -> OrderKey | None:
    """The (topic, key) whose order ``record`` keeps; None when it promises none: without a
    key librdkafka picks its partition at random, and one on its way to the DLQ left its
    topic's order."""
    key = record.key
    if key is None or record.dlq_error is not None:
        return None
    return record.topic, key


class _Line:
    """One key's records that wait, by rank: those waiting out a backoff or put back
    (``waiting``; ``due``: their time came, behind an earlier one that still waits), and the
    key's records never taken yet, held behind them (``held``, in acceptance order)."""

    __slots__ = ("due", "held", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[int, int, Record]] = []  # heap of (rank, seq, record)
        self.due: set[Record] = set()
        self.held: list[Record] = []


class KeyOrder:
    """A record's rank is the ordinal of its first take: first takes go in acceptance order
    (what this keeps), and a record taken again keeps its rank. Ranks are read only when a
    record fails: each take logs its batch (one append), so with nothing failing a take pays
    nothing per record, and with no key waiting the queue never asks here."""

    def __init__(self) -> None:
        self.lines: dict[OrderKey, _Line] = {}
        self.going: dict[Record, int] = {}  # released to the front of fresh, with their ranks
        self._going_keys: dict[OrderKey, int] = {}  # how many of ``going`` per key
        self.rank: dict[Record, int] = {}  # in flight, read back from the log or ``going``
        # Batches taken (``taken`` appends each), the first record ranked ``_base``.
        self._log: deque[list[Record]] = deque()
        self._logged = 0  # records in the log
        self._base = 0
        self._dropped = -1  # the rank of an in-flight record whose batch left the log
        self._seq = 0

    def taken(self, head: list[Record], ranks: dict[Record, int] | None,
              in_flight: int) -> None:
        """``head`` left the queue (``ranks``: those taken again, with their ranks, kept) and
        ``in_flight`` counts it: logged, one append per batch. Past ``_LOG_SLACK`` records
        beyond twice what is in flight, the oldest batches leave the log down to
        ``_LOG_SLACK`` / 2 past what is in flight (the next trim is a while off)."""
        log = self._log
        log.append(head)
        self._logged += len(head)
        if ranks:
            self.rank.update(ranks)
        elif self._logged <= 2 * in_flight + _LOG_SLACK:
            return
        keep = in_flight + _LOG_SLACK // 2
        while self._logged > keep and len(log) > 1:
            batch = log.popleft()
            self._logged -= len(batch)
            self._base += len(batch)
            self._dropped = self._base - 1

    def forget(self, records: Iterable[Record]) -> None:
        """They left flight (delivered, or failed and routed)."""
        pop = self.rank.pop
        for record in records:
            pop(record, None)

    def restart(self) -> None:
        """Nothing is in flight (a new producer, or all reported): no rank is read back."""
        if self._log:
            self._base += self._logged
            self._logged = 0
            self._log.clear()
        if self.rank:
            self.rank.clear()

    def _rank_of(self, record: Record) -> int:
        rank = self.rank.pop(record, None)
        if rank is None and self._log:  # the first failure since these batches were taken
            setdefault = self.rank.setdefault  # a record taken again keeps its first rank
            for ordinal, taken in enumerate(chain.from_iterable(self._log), self._base):
                setdefault(taken, ordinal)
            self._base += self._logged
            self._logged = 0
            self._log.clear()
            rank = self.rank.pop(record, None)
        return self._dropped if rank is None else rank

    def wait(self, key: OrderKey, record: Record) -> None:
        """``record`` (taken before) waits: its key's later records wait behind it."""
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = _Line()
        self._seq += 1
        heapq.heappush(line.waiting, (self._rank_of(record), self._seq, record))

    def due(self, key: OrderKey, record: Record) -> list[Record]:
        """``record``'s time came: what of its key goes now, in order."""
        line = self.lines[key]
        line.due.add(record)
        return self._ready(key, line)

    def _ready(self, key: OrderKey, line: _Line) -> list[Record]:
        """What of ``line`` goes now, in order: its first records whose time came, none while
        an earlier one waits on or its key's records released before are still in fresh
        (they go first: these go when the last of them is taken); its held records once none
        waits, the line ended."""
        if self._going_keys.get(key):
            return []
        waiting, due = line.waiting, line.due
        out = []
        while waiting and waiting[0][2] in due:
            rank, _, first = heapq.heappop(waiting)
            due.discard(first)
            self.going[first] = rank
            out.append(first)
        if out:
            self._going_keys[key] = len(out)
        if not waiting:
            del self.lines[key]
            out += line.held
        return out

    def release_all(self) -> list[Record]:
        """Every line's records, each key's in order (a drain, or the broker back); a key with
        records released before still in fresh goes once they are taken."""
        out: list[Record] = []
        for key, line in list(self.lines.items()):
            line.due.update(entry[2] for entry in line.waiting)
            out += self._ready(key, line)
        return out

    def sendable(self, fresh: deque[Record],
                 limit: int) -> tuple[list[Record], dict[Record, int]]:
        """Up to ``limit`` records off the front of ``fresh`` that may go now, and the ranks
        of those taken again. One whose key waits on an earlier record joins that key's line,
        once: never taken, it is held behind; taken before, with a rank past the first that
        waits, it waits among them by rank, due."""
        head: list[Record] = []
        ranks: dict[Record, int] = {}
        lines, going, going_keys = self.lines, self.going, self._going_keys
        if not going:  # most often none of the first ``limit`` is held: one pass to see
            first = list(islice(fresh, limit))
            if not any([r.key is not None and (r.topic, r.key) in lines
                        and r.dlq_error is None for r in first]):
                for _ in range(len(first)):
                    fresh.popleft()
                return first, ranks
        popleft, take = fresh.popleft, head.append
        while fresh and len(head) < limit:
            record = popleft()
            rank = going.pop(record, None) if going else None
            key = None  # order_key, inlined: this runs per record while any key waits
            if record.key is not None and record.dlq_error is None:
                key = (record.topic, record.key)
            line = None if key is None else lines.get(key)
            if line is None or (rank is not None and rank < line.waiting[0][0]):
                take(record)
                if rank is not None:
                    ranks[record] = rank
            elif rank is None:
                line.held.append(record)
            else:
                self._seq += 1
                heapq.heappush(line.waiting, (rank, self._seq, record))
                line.due.add(record)
            if rank is not None and key is not None:
                going_keys[key] -= 1
                if not going_keys[key]:  # the last released of its key: the line's turn
                    del going_keys[key]
                    if key in lines:
                        fresh.extendleft(reversed(self._ready(key, lines[key])))
        return head, ranks

    def unsent(self, records: list[Record], ranks: dict[Record, int]) -> None:
        """``records`` go back to the front of fresh untaken (past the in-flight window)."""
        for record in records:
            self._going_again(record, order_key(record), ranks.pop(record, None))

    def _going_again(self, record: Record, key: OrderKey | None, rank: int | None) -> None:
        """``record``, back at the front of fresh, keeps ``rank`` (if taken before) among
        its key's records released ahead of that key's line."""
        if rank is not None and key is not None:
            self.going[record] = rank
            self._going_keys[key] = self._going_keys.get(key, 0) + 1

    def given_back(self, records: list[Record],
                   put_back: Callable[[Record, int], None]) -> list[Record]:
        """Taken, then refused by librdkafka's full queue: those whose key waits on an earlier
        record join its line (``put_back`` due now); the rest, returned, keep their ranks."""
        back = []
        for record in records:
            key = order_key(record)
            if key in self.lines:
                put_back(record, 0)
                continue
            self._going_again(record, key, self.rank.pop(record, None))
            back.append(record)
        return back

    def queued_ids(self) -> set[str]:
        return {record.id for line in self.lines.values()
                for record in chain((entry[2] for entry in line.waiting), line.held)}

    def waiting(self) -> int:
        """Records due behind an earlier one of their key, and those held behind them."""
        return sum(len(line.due) + len(line.held) for line in self.lines.values())
