"""What the pump sends next: fresh records, a heap of retries due later, records waiting to be
spilled, and how many are in flight. Not thread-safe: the ledger's condition guards it."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import accumulate, islice
from operator import attrgetter

from kafka_relay.record import Record

# What librdkafka may hold at once (the ledger keeps its own copy until the report), as a
# share of the buffer: librdkafka's resident memory grows ~3 bytes per byte in flight (the
# message, its produce request, compression), so past this records wait in the ledger only
# (with the journal, without their key and value) and a stalled broker does not double the
# memory of everything pending. An eighth of the 256 MB default buffer (~250 KB) still
# carries ~10 MB/s at a 20 ms RTT, more than 0.145 vCPU hands over; 1,769 MB gets ~1.7 MB.
MIN_IN_FLIGHT_BYTES = 128 * 1024
MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024

_SIZE = attrgetter("size")


def in_flight_window(buffer_bytes: int) -> int:
    """The bytes librdkafka may hold at once, for a buffer of ``buffer_bytes``."""
    return max(MIN_IN_FLIGHT_BYTES, min(MAX_IN_FLIGHT_BYTES, buffer_bytes // 8))


class SendQueue:
    def __init__(self) -> None:
        self.fresh: deque[Record] = deque()
        self._retry: list[tuple[int, int, Record]] = []  # heap of (due_ms, seq, record)
        self._seq = 0
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

    def schedule(self, record: Record, due_ms: int) -> None:
        record.not_before_ms = due_ms
        self._seq += 1
        heapq.heappush(self._retry, (due_ms, self._seq, record))

    def release_retries(self) -> None:
        """Every record waiting out a backoff goes now (the broker is back, or a drain)."""
        while self._retry:
            _, _, record = heapq.heappop(self._retry)
            record.not_before_ms = 0
            self.fresh.append(record)

    def take_due(self, now_ms: int, limit: int, max_bytes: int) -> list[Record]:
        """Up to ``limit`` records due now, keeping in-flight bytes under ``max_bytes`` (one
        record always goes when nothing is in flight). A record larger than ``max_bytes`` goes
        when its turn comes: waiting could not make room for it while a stalled broker holds
        the rest in flight, and one over Kafka's size limit must reach librdkafka to be
        refused and routed (spilled, with its DLQ pointer)."""
        while self._retry and self._retry[0][0] <= now_ms:
            self.fresh.append(heapq.heappop(self._retry)[2])
        fresh = self.fresh
        head = list(islice(fresh, limit)) if len(fresh) > limit else list(fresh)
        size = sum(map(_SIZE, head))
        taken = len(head)
        if self.in_flight_bytes + size > max_bytes:  # per batch, not per record: how many
            sizes = list(accumulate(map(_SIZE, head), initial=self.in_flight_bytes))  # fit
            taken = max(0, bisect_right(sizes, max_bytes) - 1)
            for record in head[taken:]:  # past the window, only what could never fit goes
                if record.size <= max_bytes and (taken or self.in_flight):
                    break
                taken += 1
            head = head[:taken]
            size = sizes[taken] - self.in_flight_bytes
        if taken == len(fresh):
            fresh.clear()
        else:
            popleft = fresh.popleft
            for _ in range(taken):
                popleft()
        self.in_flight_bytes += size
        self.in_flight += taken
        return head

    def done(self, records: Sequence[Record]) -> None:
        """Their delivery reports came (or they never reached librdkafka)."""
        self.in_flight -= len(records)
        self.in_flight_bytes = max(0, self.in_flight_bytes - sum(map(_SIZE, records)))

    def give_back(self, records: list[Record]) -> None:
        """Taken but not handed to librdkafka (its queue was full): first in line again."""
        self.done(records)
        self.fresh.extendleft(reversed(records))

    def requeue_missing(self, unsettled: Iterable[Record]) -> None:
        queued = {r.id for r in self.fresh} | {entry[2].id for entry in self._retry}
        self.fresh.extend(r for r in unsettled if r.id not in queued)
        self.in_flight = self.in_flight_bytes = 0

    def waiting_retry(self) -> int:
        return len(self._retry)

    def next_due_ms(self) -> int | None:
        return self._retry[0][0] if self._retry else None

    def has_due_work(self, now_ms: int) -> bool:
        due = self.next_due_ms()
        return bool(self.fresh or self.in_flight > 0 or (due is not None and due <= now_ms)
                    or self.to_spill or self.oversize)
