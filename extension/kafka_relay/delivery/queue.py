"""What the pump sends next: fresh records, a heap of retries due later (each key's later
records waiting behind its own: ``KeyOrder``), records waiting to be spilled, and how many
are in flight. Not thread-safe: the ledger's condition guards it."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import accumulate, islice
from operator import attrgetter

from kafka_relay.delivery.keyorder import KeyOrder, order_key
from kafka_relay.record import Record

# What librdkafka may hold at once (the ledger keeps its own copy until the report), as a
# share of the buffer: librdkafka's resident memory grows ~3 bytes per byte in flight (the
# message, its produce request, compression), so past this records wait in the ledger only
# (with the journal, without their value) and a stalled broker does not double the
# memory of everything pending. An eighth of the 256 MB default buffer (~250 KB) still
# carries ~10 MB/s at a 20 ms RTT, more than 0.145 vCPU hands over; 1,769 MB gets ~1.7 MB.
MIN_IN_FLIGHT_BYTES = 128 * 1024
MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024

_SIZE = attrgetter("size")


def in_flight_window(buffer_bytes: int) -> int:
    """The bytes librdkafka may hold at once, for a buffer of ``buffer_bytes``."""
    return max(MIN_IN_FLIGHT_BYTES, min(MAX_IN_FLIGHT_BYTES, buffer_bytes // 8))


def _fitting(head: list[Record], in_flight: int, in_flight_bytes: int,
             max_bytes: int) -> tuple[int, int]:
    """How many of ``head`` go beside what is in flight, and their bytes: counted per batch,
    not per record; past the window only what could never fit goes."""
    sizes = list(accumulate(map(_SIZE, head), initial=in_flight_bytes))
    taken = max(0, bisect_right(sizes, max_bytes) - 1)
    for record in head[taken:]:
        if record.size <= max_bytes and (taken or in_flight):
            break
        taken += 1
    return taken, sizes[taken] - in_flight_bytes


class SendQueue:
    def __init__(self) -> None:
        self.fresh: deque[Record] = deque()
        self._retry: list[tuple[int, int, Record]] = []  # heap of (due_ms, seq, record)
        self._seq = 0
        self._order = KeyOrder()
        # Counted from the moment a record leaves the queue, so a flush never sees "nothing
        # to do" while a batch is on its way to librdkafka.
        self.in_flight = 0
        # librdkafka keeps its own copy of what it holds: capped so a stalled broker does
        # not double the memory of everything pending.
        self.in_flight_bytes = 0
        self.flush_requests = 0  # callers waiting for outcomes: the pump flushes, not polls
        # Spills the pump does outside the lock (an S3 put takes time): (record, spool ok).
        self.to_spill: list[tuple[Record, bool]] = []
        self.oversize: list[Record] = []

    def push(self, record: Record) -> None:
        self.fresh.append(record)

    def push_all(self, records: Iterable[Record]) -> None:
        self.fresh.extend(records)

    def put_back(self, record: Record) -> None:
        """Back from librdkafka unsent (purged, or its producer replaced): it goes first,
        ahead of its key's later records."""
        if order_key(record) is None:
            self.fresh.append(record)
        else:
            self.schedule(record, 0)

    def schedule(self, record: Record, due_ms: int) -> None:
        """Due again at ``due_ms``; until it goes, its key's later records wait behind it."""
        record.not_before_ms = due_ms
        self._seq += 1
        heapq.heappush(self._retry, (due_ms, self._seq, record))
        key = order_key(record)
        if key is not None:
            self._order.wait(key, record)

    def release_retries(self) -> None:
        """Every record waiting out a backoff goes now (the broker is back, or a drain), each
        key's records in their order, ahead of the key's later ones."""
        lines = self._order.lines
        while self._retry:
            _, _, record = heapq.heappop(self._retry)
            record.not_before_ms = 0
            if order_key(record) not in lines:
                self.fresh.append(record)
        self.fresh.extendleft(reversed(self._order.release_all()))

    def take_due(self, now_ms: int, limit: int, max_bytes: int) -> list[Record]:
        """Up to ``limit`` records due now, keeping in-flight bytes under ``max_bytes`` (one
        record always goes when nothing is in flight). A record larger than ``max_bytes`` goes
        when its turn comes: waiting could not make room for it while a stalled broker holds
        the rest in flight, and one over Kafka's size limit must reach librdkafka to be
        refused and routed (spilled, with its DLQ pointer). A record whose key has an earlier
        one waiting leaves ``fresh`` for that key's line (``KeyOrder``) when met here."""
        fresh, order = self.fresh, self._order
        if self._retry and self._retry[0][0] <= now_ms:
            going: list[Record] = []  # to the front, each key's in order
            while self._retry and self._retry[0][0] <= now_ms:
                record = heapq.heappop(self._retry)[2]
                key = order_key(record)
                if key in order.lines:
                    going += order.due(key, record)
                else:
                    fresh.append(record)
            fresh.extendleft(reversed(going))
        ranks = None
        if order.lines or order.going:  # only while some key waits on a record of its own
            head, ranks = order.sendable(fresh, limit)
        else:
            head = list(islice(fresh, limit)) if len(fresh) > limit else list(fresh)
        size = sum(map(_SIZE, head))
        taken = len(head)
        if self.in_flight_bytes + size > max_bytes:
            taken, size = _fitting(head, self.in_flight, self.in_flight_bytes, max_bytes)
            if ranks is not None:  # taken off fresh already: the rest goes back
                order.unsent(head[taken:], ranks)
                fresh.extendleft(reversed(head[taken:]))
            head = head[:taken]
        if ranks is None:
            if taken == len(fresh):
                fresh.clear()
            else:
                popleft = fresh.popleft
                for _ in range(taken):
                    popleft()
        self.in_flight_bytes += size
        self.in_flight += taken
        if head:  # logged for the ranks a failure reads back: per batch, not per record
            order.taken(head, ranks, self.in_flight)
        return head

    def done(self, records: Sequence[Record]) -> None:
        """Their delivery reports came (or they never reached librdkafka)."""
        self.in_flight -= len(records)
        self.in_flight_bytes = max(0, self.in_flight_bytes - sum(map(_SIZE, records)))
        if self._order.rank:  # only after a failure read ranks back
            self._order.forget(records)
            if not self.in_flight:
                self._order.restart()

    def give_back(self, records: list[Record]) -> None:
        """Taken but not handed to librdkafka (its queue was full): first in line again."""
        back = self._order.given_back(records, self.schedule) if (
            self._order.lines or self._order.rank) else records
        self.done(records)
        self.fresh.extendleft(reversed(back))

    def requeue_missing(self, unsettled: Iterable[Record]) -> None:
        """After a producer rebuild: what is unsettled but queued nowhere (in flight in the
        old producer) goes again, each first in its key's line."""
        queued = ({r.id for r in self.fresh} | {entry[2].id for entry in self._retry}
                  | self._order.queued_ids())
        for record in [r for r in unsettled if r.id not in queued]:
            self.put_back(record)
        self.in_flight = self.in_flight_bytes = 0
        self._order.restart()

    def waiting_retry(self) -> int:
        """Records waiting out a backoff, and those their keys hold back behind them."""
        return len(self._retry) + self._order.waiting()

    def next_due_ms(self) -> int | None:
        return self._retry[0][0] if self._retry else None

    def has_due_work(self, now_ms: int) -> bool:
        due = self.next_due_ms()
        return bool(self.fresh or self.in_flight > 0 or (due is not None and due <= now_ms)
                    or self.to_spill or self.oversize)
