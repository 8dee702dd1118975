"""The relay: one persistent producer, the extension's copy of every unsettled record.

Threads: HTTP handler threads call ``accept``/``wait_settled``; the lifecycle
thread calls ``flush``/``drain``; exactly one pump thread talks to librdkafka
(produce, poll, flush, rebuild), so delivery callbacks run in one place.

Every accepted record stays in ``_unsettled`` until it is delivered, dead-
lettered or spilled. Counters prove it: accepted + restored ==
delivered + dead_lettered + spilled + pending.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from kafka_relay.config import Config
from kafka_relay.deadletter.spill import SPOOL_PREFIX
from kafka_relay.observability.log import JsonLogger
from kafka_relay.producer.classify import ErrorKind, classify, describe
from kafka_relay.record import Outcome, Record

_BACKOFF_CAP_MS = 30_000
_PRODUCE_BATCH = 2_000
_IDLE_WAIT_S = 0.05


class ProducerLike(Protocol):
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...
    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
    def __len__(self) -> int: ...


class BufferFull(Exception):
    def __init__(self, retry_after_ms: int, detail: str) -> None:
        super().__init__(detail)
        self.retry_after_ms = retry_after_ms


class Spill(Protocol):
    def __call__(
        self, records: Sequence[Record], *, reason: str, retry_later: bool = True
    ) -> str: ...


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


@dataclass(frozen=True)
class FlushResult:
    delivered: int
    dead_lettered: int
    spilled: int
    remaining: int
    duration_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class _Watch:
    outcomes: dict[str, tuple[str, str | None]] = field(default_factory=dict)


class Relay:
    def __init__(
        self,
        config: Config,
        *,
        producer_factory: Callable[[], ProducerLike],
        spill: Spill,
        logger: JsonLogger,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._factory = producer_factory
        self._spill = spill
        self._log = logger
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._unsettled: dict[str, Record] = {}
        self._bytes = 0
        self._fresh: deque[Record] = deque()
        self._retry: list[tuple[int, int, Record]] = []  # heap of (not_before_ms, seq, record)
        self._retry_seq = 0
        self._in_flight = 0
        self._flush_requests = 0
        self._rebuild = False
        self._stopping = False
        self._accepting = True
        self._watches: dict[str, _Watch] = {}
        # Spills wait for the pump, which does them outside the lock (an S3 put takes time).
        self._to_spill: list[Record] = []  # the DLQ failed them: spilled together
        self._oversize: list[Record] = []  # too large for Kafka: spilled, pointer to the DLQ
        self.counts = Counts()
        self.last_error: str | None = None
        self.broker_state = "unknown"
        self._producer: ProducerLike = self._build()
        self._thread = threading.Thread(target=self._pump, name="kafka-relay-pump", daemon=True)

    # -- public surface -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def producer(self) -> ProducerLike:
        """The current producer instance (the same object across invocations)."""
        return self._producer

    def depth(self) -> tuple[int, int]:
        with self._cond:
            return len(self._unsettled), self._bytes

    def accept(self, records: Sequence[Record]) -> None:
        """Take ownership of ``records`` (all or none); raises BufferFull when over the limits."""
        size = sum(r.size for r in records)
        with self._cond:
            if not self._accepting:
                raise BufferFull(0, "the extension is shutting down and accepts no more records")
            over_records = len(self._unsettled) + len(records) > self._config.max_buffer_records
            over_bytes = self._bytes + size > self._config.max_buffer_bytes
            if over_records or over_bytes:
                self.counts.rejected += len(records)
                raise BufferFull(
                    self._retry_after_ms(),
                    f"buffer full ({len(self._unsettled)} records, {self._bytes} bytes pending; "
                    f"limits KAFKA_RELAY_MAX_BUFFER_RECORDS={self._config.max_buffer_records}, "
                    f"KAFKA_RELAY_MAX_BUFFER_BYTES={self._config.max_buffer_bytes})",
                )
            self._take(records)
            self.counts.accepted += len(records)
            self._cond.notify_all()

    def note_rejected(self, records: int) -> None:
        """Records refused by validation (400): never accepted, but counted."""
        with self._cond:
            self.counts.rejected += records

    def restore(self, records: Iterable[Record]) -> int:
        """Re-own records spilled to the local spool earlier; they get a new outcome."""
        restored = [r for r in records if r.id not in self._unsettled]
        with self._cond:
            self._take(restored)
            self.counts.restored += len(restored)
            self._cond.notify_all()
        return len(restored)

    def watch(self, ids: Sequence[str]) -> _Watch:
        """Register interest in outcomes before the records can settle."""
        watch = _Watch()
        with self._cond:
            for record_id in ids:
                self._watches[record_id] = watch
        return watch

    def unwatch(self, ids: Sequence[str]) -> None:
        with self._cond:
            for record_id in ids:
                self._watches.pop(record_id, None)

    def wait_settled(
        self, watch: _Watch, ids: Sequence[str], timeout_s: float
    ) -> list[dict[str, str | None]]:
        """Per-record outcomes; records not settled in time are reported as ``pending``."""
        deadline = self._monotonic() + timeout_s
        with self._cond:
            self._flush_requests += 1
            try:
                while len(watch.outcomes) < len(ids):
                    remaining = deadline - self._monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, 0.1))
            finally:
                self._flush_requests -= 1
            self.unwatch(ids)
            outcomes = [(i, *watch.outcomes.get(i, ("pending", None))) for i in ids]
            return [{"id": i, "outcome": outcome, "error": error} for i, outcome, error in outcomes]

    def flush(self, timeout_s: float, *, retry_now: bool = False) -> FlushResult:
        """Push everything due to Kafka and wait for the outcomes, at most ``timeout_s``.

        ``retry_now`` also sends records still waiting out a retry backoff.
        """
        start = self._monotonic()
        before = self.counts.as_dict()
        deadline = start + max(0.0, timeout_s)
        with self._cond:
            if retry_now:
                self._release_retries()
            self._flush_requests += 1
            self._cond.notify_all()
            try:
                while self._has_due_work() and self._monotonic() < deadline:
                    self._cond.wait(min(0.05, max(0.001, deadline - self._monotonic())))
            finally:
                self._flush_requests -= 1
            after = self.counts.as_dict()
            return FlushResult(
                delivered=after["delivered"] - before["delivered"],
                dead_lettered=after["dead_lettered"] - before["dead_lettered"],
                spilled=after["spilled"] - before["spilled"],
                remaining=len(self._unsettled),
                duration_ms=round((self._monotonic() - start) * 1000, 3),
            )

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def spill_unsettled(self, *, reason: str) -> int:
        """Spill everything not yet settled (SHUTDOWN). Late deliveries are duplicates by id."""
        with self._cond:
            records = list(self._unsettled.values())
        if not records:
            return 0
        destination = self._spill(records, reason=reason)
        with self._cond:
            for record in records:
                self._settle(record, Outcome.SPILLED, destination)
        return len(records)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "counts": self.counts.as_dict(),
                "pending": len(self._unsettled),
                "pending_bytes": self._bytes,
                "in_flight": self._in_flight,
                "waiting_retry": len(self._retry),
                "broker_state": self.broker_state,
                "last_error": self.last_error,
            }

    # -- bookkeeping (callers hold self._cond) -----------------------------------

    def _take(self, records: Iterable[Record]) -> None:
        for record in records:
            self._unsettled[record.id] = record
            self._bytes += record.size
            self._fresh.append(record)

    def _retry_after_ms(self) -> int:
        return max(100, min(5_000, self._config.retry_backoff_ms))

    def _has_due_work(self) -> bool:
        now = self._wall_ms()
        due_retry = bool(self._retry) and self._retry[0][0] <= now
        spills = bool(self._to_spill) or bool(self._oversize)
        return bool(self._fresh) or self._in_flight > 0 or due_retry or spills

    def _release_retries(self) -> None:
        while self._retry:
            _, _, record = heapq.heappop(self._retry)
            record.not_before_ms = 0
            self._fresh.append(record)

    def _schedule(self, record: Record, delay_ms: int) -> None:
        if delay_ms <= 0:
            self._fresh.append(record)
            return
        record.not_before_ms = self._wall_ms() + delay_ms
        self._retry_seq += 1
        heapq.heappush(self._retry, (record.not_before_ms, self._retry_seq, record))

    def _settle(self, record: Record, outcome: Outcome, detail: str | None) -> None:
        """``detail``: the error that sent it to the DLQ, or where it was spilled."""
        if self._unsettled.pop(record.id, None) is None:
            return  # already settled (e.g. spilled, then a late delivery report)
        self._bytes -= record.size
        if outcome is Outcome.DELIVERED:
            self.counts.delivered += 1
        elif outcome is Outcome.DEAD_LETTERED:
            self.counts.dead_lettered += 1
        elif (detail or "").startswith(SPOOL_PREFIX):
            self.counts.spooled += 1
        else:
            self.counts.spilled += 1
        watch = self._watches.get(record.id)
        if watch is not None:
            watch.outcomes[record.id] = (outcome.value, detail)
            self._cond.notify_all()

    def _build(self) -> ProducerLike:
        self.counts.producers_built += 1
        return self._factory()

    # -- the pump thread -------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                rebuild, self._rebuild = self._rebuild, False
            if rebuild:  # before taking a batch: the rebuild re-queues everything unsettled
                self._replace_producer()
            with self._cond:
                batch = self._take_due()
                flushing = self._flush_requests > 0
            for index, record in enumerate(batch):
                if not self._produce(record):
                    with self._cond:
                        self._in_flight -= len(batch) - index
                        self._fresh.extendleft(reversed(batch[index:]))
                    break
            try:
                if flushing:
                    self._producer.flush(0.005)
                elif batch or self._in_flight:
                    self._producer.poll(0 if batch else 0.001)
                else:
                    self._producer.poll(0)  # error callbacks, then sleep until work arrives
                    self._idle()
            except KafkaException as exc:
                self.on_client_error(exc.args[0])
            with self._cond:
                failed_dlq, self._to_spill = self._to_spill, []
                oversize, self._oversize = self._oversize, []
            if failed_dlq:
                self._spill_failed_dlq(failed_dlq)
            for record in oversize:
                self._spill_oversize(record)
            with self._cond:
                self._cond.notify_all()

    def _idle(self) -> None:
        """Nothing queued or in flight: wait for accept/flush/stop (they notify), or for the
        next retry to fall due, rather than polling librdkafka on a timer."""
        with self._cond:
            if (self._fresh or self._flush_requests or self._to_spill or self._oversize
                    or self._stopping or self._rebuild):
                return
            wait_s = _IDLE_WAIT_S
            if self._retry:
                wait_s = min(wait_s, max(0.0, (self._retry[0][0] - self._wall_ms()) / 1000))
            self._cond.wait(wait_s)

    def _take_due(self) -> list[Record]:
        now = self._wall_ms()
        while self._retry and self._retry[0][0] <= now:
            _, _, record = heapq.heappop(self._retry)
            self._fresh.append(record)
        count = min(len(self._fresh), _PRODUCE_BATCH)
        # Counted as in flight from the moment they leave the queue, so a concurrent
        # flush() never sees "nothing to do" while a batch is on its way to librdkafka.
        self._in_flight += count
        return [self._fresh.popleft() for _ in range(count)]

    def _produce(self, record: Record) -> bool:
        """Hand one record (already counted in flight) to librdkafka; False when its queue
        is full (try again later)."""
        if record.id not in self._unsettled:
            with self._cond:
                self._in_flight -= 1
            return True
        to_dlq = record.dlq_error is not None
        target = self._config.dlq_for(record.topic) if to_dlq else record.topic
        try:
            self._producer.produce(
                target,
                value=record.value,
                key=record.key,
                headers=record.kafka_headers(dlq_topic=target if to_dlq else None),
                timestamp=record.timestamp_ms or 0,
                on_delivery=lambda err, _msg, rec=record: self._on_delivery(rec, err),
            )
        except BufferError:
            return False
        except KafkaException as exc:
            with self._cond:
                self._in_flight -= 1
                self._failed(record, exc.args[0])
        return True

    def _on_delivery(self, record: Record, error: KafkaError | None) -> None:
        with self._cond:
            self._in_flight -= 1
            if error is None:
                if self.broker_state != "up":
                    # The cluster is back: records waiting out a backoff go now, not in 30 s.
                    self._release_retries()
                self.broker_state = "up"
                outcome = Outcome.DEAD_LETTERED if record.dlq_error else Outcome.DELIVERED
                self._settle(record, outcome, record.dlq_error)
            else:
                self._failed(record, error)

    def on_client_error(self, error: KafkaError) -> None:
        with self._cond:
            self.last_error = describe(error)
            if classify(error) is ErrorKind.FATAL:
                self._rebuild = True

    def _failed(self, record: Record, error: KafkaError) -> None:
        if record.id not in self._unsettled:
            return
        kind = classify(error)
        if kind is ErrorKind.REQUEUE:
            self._schedule(record, 0)
            return
        reason = describe(error)
        self.last_error = reason
        record.last_error = reason
        record.first_failed_ms = record.first_failed_ms or self._wall_ms()
        record.attempts += 1
        self.counts.retries += 1
        if kind is ErrorKind.TRANSIENT:
            self.broker_state = "degraded"
        if kind is ErrorKind.FATAL:
            self._rebuild = True
            self._schedule(record, 0)
            return
        if record.dlq_error is None:
            if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                record.dlq_error = reason
                self._oversize.append(record)
            elif kind is ErrorKind.PERMANENT:
                record.dlq_error = reason
                self._log.warning("record.dead_letter", id=record.id, topic=record.topic,
                                  error=reason, request_id=record.request_id)
                self._schedule(record, 0)
            elif record.attempts >= self._config.max_attempts:
                record.dlq_error = f"gave up after {record.attempts} attempts: {reason}"
                self._log.warning("record.dead_letter", id=record.id, topic=record.topic,
                                  error=record.dlq_error, request_id=record.request_id)
                self._schedule(record, 0)
            else:
                self._schedule(record, self._backoff_ms(record.attempts))
            return
        # The DLQ itself refuses it or stays unreachable: spill, never drop.
        if kind is ErrorKind.PERMANENT or record.attempts >= 2 * self._config.max_attempts:
            self._to_spill.append(record)
        else:
            self._schedule(record, self._backoff_ms(record.attempts))

    def _spill_failed_dlq(self, records: list[Record]) -> None:
        destination = self._spill(records, reason=f"dead-letter failed: {records[0].last_error}")
        with self._cond:
            for record in records:
                self._settle(record, Outcome.SPILLED, destination)

    def _spill_oversize(self, record: Record) -> None:
        """Too large for Kafka, so for its DLQ too: spill the bytes, dead-letter a pointer."""
        reason = record.dlq_error or "too large"
        destination = self._spill([record], reason=reason, retry_later=False)
        with self._cond:
            self._settle(record, Outcome.SPILLED, destination)
        pointer = json.dumps({"spilled_to": destination, "id": record.id,
                              "size": record.size, "error": reason}).encode()
        dlq = self._config.dlq_for(record.topic)

        def report(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                self._log.error("dead_letter.pointer_failed", id=record.id, error=describe(err),
                                spilled_to=destination)

        try:
            self._producer.produce(dlq, value=pointer, key=record.key,
                                   headers=record.kafka_headers(dlq_topic=dlq), on_delivery=report)
        except (BufferError, KafkaException) as exc:
            self._log.error("dead_letter.pointer_failed", id=record.id, error=str(exc),
                            spilled_to=destination)

    def _backoff_ms(self, attempts: int) -> int:
        base = self._config.retry_backoff_ms
        return int(min(_BACKOFF_CAP_MS, base * (2 ** max(0, attempts - 1))))

    def _replace_producer(self) -> None:
        """A fatal error: purge the old instance (its records come back as REQUEUE)."""
        old = self._producer
        self._log.warning("producer.rebuild", error=self.last_error)
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.flush(1.0)
        except KafkaException as exc:
            self._log.warning("producer.purge_failed", error=str(exc))
        with self._cond:
            # Anything whose report never came back is re-sent by the new producer.
            queued = {r.id for r in self._fresh} | {entry[2].id for entry in self._retry}
            self._fresh.extend(r for r in self._unsettled.values() if r.id not in queued)
            self._in_flight = 0
            self._producer = self._build()
