"""The pump: the only code that touches the confluent-kafka Producer.

One thread produces what the ledger's queue holds, polls or flushes, hands
every failure to ``Failures`` (routing applied, spills done) and rebuilds a
producer that a fatal error killed (or a restore from a snapshot made shared).
Delivery callbacks run only here, and only note the report: the pump settles each
poll round's reports in one lock round after it. Any exception while producing ONE record
settles that record and the pump goes on; an exception that escapes an
iteration ends the pump: ``failure`` says why, and everything still unsettled
goes to the spill chain.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from kafka_relay.config import Config
from kafka_relay.delivery.failures import Failures
from kafka_relay.delivery.ledger import Ledger, Spill
from kafka_relay.delivery.pointers import Pointers
from kafka_relay.delivery.routing import Action
from kafka_relay.observability.log import JsonLogger
from kafka_relay.producer.classify import ErrorKind, classify, describe
from kafka_relay.producer.factory import linger_s
from kafka_relay.protocol import ID_HEADER, BrokerState, Outcome
from kafka_relay.record import Record

PRODUCE_BATCH = 2_000

_Callback = Callable[[KafkaError | None, object], None]

# librdkafka serves its callbacks (delivery reports, client errors, OAUTHBEARER refreshes)
# only inside poll(): an idle pump polls this often while it may have some to serve.
_IDLE_WAIT_S = 0.05
# While records are in flight and nobody waits for their outcomes (no flush, drain or
# ``wait=delivered``), a batch's first rounds poll for 1 ms each, as a waiter's would: at a
# low RTT its reports come within them, so a flush that follows finds them settled. Then the
# pump takes reports only this often: a round costs a poll and several lock rounds, ~20 per
# invocation at a 20 ms RTT in 1 ms rounds. A flush request, a delivery watch, a new batch
# or a stop notifies the ledger's condition and wakes it at once.
_EAGER_ROUNDS = 5
_UNWATCHED_ROUND_S = 0.005
# librdkafka's idempotent producer sends a partition's next batch only once the one in flight
# is answered, and its broker thread busy-polls meanwhile (rd_kafka_toppar_producer_serve: the
# batch's linger has set its wake-up to "now", then the in-flight limit, 5 requests, is taken
# against the partition's in-flight *messages*): ~40-70 us of CPU per record at a 20 ms RTT
# with a batch every 5-13 ms. So while nobody waits, records that would queue behind a batch
# in flight wait here for its reports instead; records handed over within the linger still
# join the batch forming, and a flush, drain or watch takes everything at once. "Within" ends
# this much before the linger does: producing a batch takes ~1 ms per few hundred records, and
# a record that reaches librdkafka just after its batch left waits a whole round trip.
_LINGER_MARGIN_S = 0.002
# An eager poll that returns this much past its 1 ms was frozen (or starved) meanwhile: a held
# pump takes no more eager rounds, the reports wait for the next handler's end.
_FROZEN_S = 0.05


class ProducerLike(Protocol):
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...
    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
    def __len__(self) -> int: ...


class _Reports:
    """Delivery reports, noted by librdkafka's callback inside poll/flush and taken after it
    (both on the pump thread). A record's callback is the note bound to it (``of``, or
    ``of_dlq`` for one produced to its DLQ): one C call per record where a ``partial``
    took twice as long, and no scan to tell the dead-lettered ones apart when they settle.
    The report's message cannot name its record: its headers come back empty."""

    __slots__ = ("dead_lettered", "delivered", "errors", "of", "of_dlq")

    def __init__(self) -> None:
        delivered: list[Record] = []
        dead_lettered: list[Record] = []
        errors: list[tuple[Record, KafkaError]] = []

        def note(record: Record, error: KafkaError | None, _msg: object = None) -> None:
            if error is None:
                delivered.append(record)
            else:
                errors.append((record, error))

        def note_dlq(record: Record, error: KafkaError | None, _msg: object = None) -> None:
            if error is None:
                dead_lettered.append(record)
            else:
                errors.append((record, error))

        self.delivered, self.dead_lettered, self.errors = delivered, dead_lettered, errors
        self.of: Callable[[Record], _Callback] = note.__get__
        self.of_dlq: Callable[[Record], _Callback] = note_dlq.__get__

    def __bool__(self) -> bool:
        return bool(self.delivered or self.dead_lettered or self.errors)

    def take(self) -> tuple[list[Record], list[Record], list[tuple[Record, KafkaError]]]:
        """(delivered, dead-lettered, failed with their errors) since the last take."""
        taken = self.delivered[:], self.dead_lettered[:], self.errors[:]
        self.delivered.clear()
        self.dead_lettered.clear()
        self.errors.clear()
        return taken


def _take_batch(ledger: Ledger, now_ms: int, *,
                hold_back: bool) -> tuple[list[Record], bool, int, int]:
    """Under the ledger's lock: the records to produce now (with their keys and values, read
    back where they were dropped), whether anyone waits for outcomes, how many are in flight
    (the batch counted), how many wait queued. ``hold_back`` (what is in flight has left its
    linger): none while records are in flight and nobody waits, unless a full batch queued."""
    queue = ledger.queue
    flushing = queue.flush_requests > 0
    batch: list[Record] = []
    if not (hold_back and queue.in_flight and not flushing and len(queue.fresh) < PRODUCE_BATCH):
        batch = queue.take_due(now_ms, PRODUCE_BATCH, ledger.resident.window)
        if batch:
            batch = ledger.warm(batch, taken=True)
    return batch, flushing, queue.in_flight, len(queue.fresh)


def _unproducible_why(exc: Exception) -> tuple[ErrorKind, int | None, str]:
    """What routing is told of a ``produce`` call that raised."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if isinstance(error, KafkaError):
        return classify(error), error.code(), describe(error)
    if isinstance(exc, KafkaException):
        return ErrorKind.POISON, None, f"KafkaException: {exc}"
    return ErrorKind.POISON, None, f"produce raised {type(exc).__name__}: {exc}"


class _Sender:
    """Hands batches to librdkafka, each record with the note its report calls."""

    __slots__ = ("_config", "_ledger", "_log", "reports")

    def __init__(self, ledger: Ledger, config: Config, logger: JsonLogger) -> None:
        self._ledger = ledger
        self._config = config
        self._log = logger
        self.reports = _Reports()

    def produce(self, producer: ProducerLike, batch: list[Record],
                failed: Callable[[Record, ErrorKind, int | None, str], None]) -> None:
        """Hand the batch to librdkafka; what its full queue refuses goes back, first in line.
        This runs per record: no lock round unless a record settled meanwhile. Arguments go
        by position (keywords cost confluent-kafka ~0.5 us more per call) and the record id
        as text (librdkafka stores it as UTF-8, the same bytes as ``id.encode()``)."""
        unsettled = self._ledger.unsettled
        produce = producer.produce
        report_of = self.reports.of
        for index, record in enumerate(batch):
            if record.id not in unsettled:  # settled meanwhile (spilled at a drain)
                with self._ledger.cond:
                    self._ledger.queue.done((record,))
                continue
            try:
                if record.dlq_error is None:
                    produce(record.topic, record.value, record.key, -1, report_of(record), None,
                            record.timestamp_ms or 0,
                            [*record.headers, (ID_HEADER, record.id)] if record.headers
                            else [(ID_HEADER, record.id)])
                else:
                    target = record.dlq_topic or self._config.dlq_for(record.topic)
                    produce(target, record.value, record.key, -1, self.reports.of_dlq(record),
                            None, record.timestamp_ms or 0,
                            record.kafka_headers(dlq_topic=target,
                                                 function=self._config.function_name))
            except BufferError:
                with self._ledger.cond:
                    self._ledger.queue.give_back(batch[index:])
                return
            except Exception as exc:  # this record settles (DLQ, else spill), never the pump
                if not isinstance(exc, KafkaException):
                    self._log.error("record.unproducible", id=record.id, topic=record.topic,
                                    to_dlq=record.dlq_error is not None,
                                    error=f"{type(exc).__name__}: {exc}")
                failed(record, *_unproducible_why(exc))


def _settle(ledger: Ledger, produced: list[Record] | None, delivered: list[Record],
            dead_lettered: list[Record], *, was_up: bool) -> bool:
    """Under the ledger's lock: the bytes of the records just ``produced`` dropped (librdkafka
    holds them until the report), the delivered and dead-lettered ones settled; whether any
    reached Kafka."""
    queue = ledger.queue
    if produced:
        ledger.resident.drop(produced)
    if not (delivered or dead_lettered):
        return False
    queue.done(delivered)
    queue.done(dead_lettered)
    if not was_up:  # the cluster is back: records waiting out a backoff go now, not in 30 s
        queue.release_retries()
    if dead_lettered:  # reached the DLQ: their outcome says so
        ledger.settle(dead_lettered, Outcome.DEAD_LETTERED)
    ledger.settle(delivered, Outcome.DELIVERED)
    return True


def _build(ledger: Ledger, factory: Callable[[], ProducerLike]) -> ProducerLike:
    with ledger.cond:
        ledger.counts.producers_built += 1
    return factory()


class Pump:
    def __init__(self, ledger: Ledger, config: Config, *,
                 producer_factory: Callable[[], ProducerLike], spill: Spill, logger: JsonLogger,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 monotonic: Callable[[], float] = time.monotonic,
                 defer_build: bool = False,
                 on_thaw: Callable[[ProducerLike], None] | None = None) -> None:
        self._ledger = ledger
        self._queue = ledger.queue
        self._factory = producer_factory
        self._failures = Failures(ledger, config, spill=spill, logger=logger, wall_ms=wall_ms)
        self._pointers = Pointers(max_attempts=config.max_attempts, function=config.function_name,
                                  cond=ledger.cond, logger=logger)
        self._log = logger
        self._wall_ms, self._monotonic = wall_ms, monotonic
        self._rebuild = False
        self._on_thaw = on_thaw  # e.g. a fresh MSK IAM token before producing (credentials)
        self._thawed = False
        self._stopping = False
        self.broker_state = BrokerState.UNKNOWN
        self.last_error: str | None = None
        self.failure: str | None = None  # why the pump stopped for good
        self._deferred = defer_build
        self._eager_rounds = 0  # 1 ms polls left since the last batch
        # When the batch librdkafka is forming began (a produce with nothing in flight): past
        # its linger, what is in flight holds the next records back (_take_batch).
        self._linger_s = linger_s(config)
        self._forming_since = 0.0
        self._held_back = False  # the last round left records queued behind those in flight
        # After a round with records in flight, nobody waiting and no eager round left: the
        # fresh records the window held back (None otherwise; another count: some came).
        self._quiet_left: int | None = None
        # Held (``auto`` deferring, a handler's end told): after the round owed and its
        # eager polls, no round until held again or released (``hold``).
        self._held = False
        self._round_owed = False
        self._sender = _Sender(ledger, config, logger)
        self._reports = self._sender.reports
        self.producer: ProducerLike
        if not defer_build:  # SnapStart defers it past the snapshot: built by start()
            self.producer = _build(self._ledger, self._factory)
        self._thread = threading.Thread(target=self.run, name="kafka-relay-pump", daemon=True)

    def start(self) -> None:
        """Build the producer if it was deferred (no broker connection and no producer
        identity exist before), then run the pump thread."""
        if self._deferred:  # a build that raises leaves it deferred: the next start retries
            self.producer = _build(self._ledger, self._factory)
            self._deferred = False
        self._thread.start()

    def stop(self, join_s: float = 2.0) -> None:
        with self._ledger.cond:
            self._stopping = True
            self._ledger.cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=join_s)
        self._pointers.abandon()

    def thawed(self, *, restored: bool = False) -> None:
        """An INVOKE after a freeze: ``on_thaw`` runs on the pump thread before its next batch.
        ``restored`` (from a snapshot every copy shares): a new producer first."""
        if self._on_thaw is not None or restored:
            with self._ledger.cond:
                self._thawed = self._on_thaw is not None
                self._rebuild = self._rebuild or restored
                self._ledger.cond.notify_all()

    def hold(self, held: bool = True) -> None:
        """Held: one round now (what was handed over goes out) and its batch's eager polls
        (at a low RTT its acknowledgements settle before the freeze), then no round until
        the next ``hold``, or until someone waits for outcomes (a flush, a drain,
        ``wait=delivered``), a rebuild or a stop: the reports that come in at the thaw and
        the next handler's records wait for that handler's end instead of taking the CPU
        beside it. ``held=False`` lets it run freely again."""
        if not (held or self._held):  # every invocation that flushes: no lock round
            return
        with self._ledger.cond:
            self._held = self._round_owed = held
            self._ledger.cond.notify_all()

    def _sleep_held(self) -> bool:
        """Held with its round done and nothing urgent: sleep until that changes; True when
        it slept."""
        with self._ledger.cond:
            queue = self._queue
            if not self._held or self._round_owed or self._stopping or self._rebuild \
                    or queue.flush_requests or queue.to_spill or queue.oversize \
                    or (self._eager_rounds and queue.in_flight) \
                    or (self._held_back and not queue.in_flight):  # now free to go
                return False
            self._ledger.cond.wait()
            return True

    def run(self) -> None:
        """The pump thread's body (tests may call it in their own thread)."""
        try:
            while not self._stopping:
                if self._held and self._sleep_held():
                    continue
                if not self.step():
                    self._wait(None)
                elif self._quiet_left is not None:
                    self._wait(self._quiet_left)
        except BaseException as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # delivered ones are not spilled again
                self._settle_reports()
            self._failures.pump_died(self.failure)

    def step(self) -> bool:
        """One round: rebuild if due, produce a batch, poll (or flush), do waiting spills.
        True when there was something to do. Tests call it without the thread."""
        hold_back = self._monotonic() - self._forming_since >= self._linger_s - _LINGER_MARGIN_S
        with self._ledger.cond:
            rebuild, self._rebuild = self._rebuild, False
            thawed, self._thawed = self._thawed, False
            self._round_owed = False
            if not (rebuild or thawed):  # the usual round: the batch in the same lock round
                batch, flushing, in_flight, left = _take_batch(self._ledger, self._wall_ms(),
                                                               hold_back=hold_back)
        if rebuild or thawed:
            if rebuild:  # before taking a batch: the rebuild re-queues everything unsettled
                self._replace_producer()
            if thawed and self._on_thaw is not None:
                self._on_thaw(self.producer)
            with self._ledger.cond:
                batch, flushing, in_flight, left = _take_batch(self._ledger, self._wall_ms(),
                                                               hold_back=hold_back)
        # A waiter with nothing in flight (its last reports settled before it woke): nothing
        # to flush, and a flush that returns at once made the pump spin until the waiter got
        # the GIL back to leave (~100 empty rounds per flushed batch, measured).
        flushing = flushing and bool(batch or in_flight)
        self._held_back = bool(left and in_flight and not batch and not flushing)
        if batch:
            if in_flight == len(batch):  # nothing was in flight: librdkafka forms a new batch
                self._forming_since = self._monotonic()
            self._sender.produce(self.producer, batch, self._failed)
        eager = bool(in_flight and not batch and not flushing and self._eager_rounds)
        if batch:
            self._eager_rounds = _EAGER_ROUNDS
        elif eager:
            self._eager_rounds -= 1
        try:
            if flushing:
                self.producer.flush(0.005)
            elif eager:
                started = time.monotonic()
                self.producer.poll(0.001)
                if self._held and time.monotonic() - started > _FROZEN_S:
                    self._eager_rounds = 0  # frozen meanwhile: the thaw is the next handler's
            else:  # past the eager rounds it waits on the ledger's condition (_wait)
                self.producer.poll(0)
        except KafkaException as exc:
            self.on_client_error(exc.args[0])
        reported = bool(self._reports)
        self._quiet_left = (left if in_flight and not flushing and not self._eager_rounds
                            and not (left and reported) else None)
        self._settle_reports(batch)  # notifies the waiters
        spilled = self._spill_waiting()
        # Read after settling: a round that settled the last records is followed by the wait.
        return bool(batch or spilled or self._queue.in_flight)

    def _wait(self, left: int | None) -> None:
        """Sleep until accept/flush/stop notify or the next retry falls due. Nothing to do
        (``left`` None): without a timer once the broker answered, librdkafka holds nothing
        and no token goes stale (a timed wake fired at every thaw, ~0.1 ms of CPU at 256 MB).
        Records in flight, nobody waiting (``left`` queued): ``_UNWATCHED_ROUND_S`` at most."""
        with self._ledger.cond:
            queue = self._queue
            if queue.to_spill or queue.oversize or self._stopping or self._rebuild:
                return
            wait_s: float | None = _UNWATCHED_ROUND_S
            if left is None:
                if queue.fresh:
                    return
                timed = (self.broker_state is not BrokerState.UP  # the probe needs client errors
                         or self._on_thaw is not None or len(self.producer))
                wait_s = _IDLE_WAIT_S if timed else None
            elif len(queue.fresh) != left or queue.flush_requests or self._thawed:
                return
            due = queue.next_due_ms()
            if due is not None:
                wait_s = min(wait_s or _IDLE_WAIT_S, max(0.0, (due - self._wall_ms()) / 1000))
            self._ledger.cond.wait(wait_s)

    # -- producing and its reports -------------------------------------------------------

    def _settle_reports(self, produced: list[Record] | None = None) -> None:
        """The reports of the last poll/flush, in one lock round with one notify (``_settle``);
        then each failure through routing."""
        if not (produced or self._reports):
            return  # nothing changed that a waiter could see: no lock round, no notify
        delivered, dead_lettered, errors = self._reports.take()
        with self._ledger.cond:
            if _settle(self._ledger, produced, delivered, dead_lettered,
                       was_up=self.broker_state is BrokerState.UP):
                self.broker_state = BrokerState.UP
            self._ledger.cond.notify_all()
        for record, error in errors:
            self._failed(record, classify(error), error.code(), describe(error))
        if errors:
            with self._ledger.cond:
                self._ledger.cond.notify_all()

    def on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error_cb (and errors poll raises): remember; rebuild when fatal."""
        with self._ledger.cond:
            self.last_error = describe(error)
            if classify(error) is ErrorKind.FATAL:
                self._rebuild = True

    def _failed(self, record: Record, kind: ErrorKind, code: int | None, reason: str) -> None:
        """Its produce failed (it left librdkafka, if it ever got there): route and apply,
        then count it out of flight (routing reads its rank among its key's records there)."""
        decision = self._failures.failed(record, kind, code, reason)
        with self._ledger.cond:
            self._queue.done((record,))
            if decision is None:
                return
            if kind is not ErrorKind.REQUEUE:
                self.last_error = reason
            if kind is ErrorKind.TRANSIENT:
                self.broker_state = BrokerState.DEGRADED
            if decision.action is Action.REBUILD:
                self._rebuild = True

    def _spill_waiting(self) -> bool:
        """Do the spills routing queued; send each oversize record's DLQ pointer. Only this
        thread queues them (routing runs here), so empty lists are read without a lock round."""
        queue = self._queue
        spilled, pointers = (self._failures.spill_waiting() if queue.to_spill or queue.oversize
                             else (0, []))
        retries = self._pointers.due()
        for pointer in [*retries, *pointers]:
            self._pointers.send(self.producer, pointer)
        return spilled > 0 or bool(retries)

    def _replace_producer(self) -> None:
        """A fatal error, or a restore: purge the old instance (its records come back as
        REQUEUE) and build a new one (a new idempotent producer id)."""
        self._log.warning("producer.rebuild", error=self.last_error)
        try:
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
            self.producer.flush(1.0)
        except KafkaException as exc:
            self._log.warning("producer.purge_failed", error=str(exc))
        self._settle_reports()  # purged ones come back REQUEUE; delivered ones are not resent
        self._ledger.requeue_unsettled()
        self.producer = _build(self._ledger, self._factory)
