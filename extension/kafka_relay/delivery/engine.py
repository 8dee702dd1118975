"""The delivery engine's facade, the one surface handoff, modes and lifecycle use.

``accept`` → the ledger (BufferFull past the limits), the pump delivers,
``flush`` waits for outcomes, ``drain`` runs SHUTDOWN (restore the spool → flush
→ spill the rest, keeping back the time the spill takes). When the pump died,
everything it held was spilled by then and ``gauge().failure`` says why (the
lifecycle reports it as an exit error). With the journal (``KAFKA_RELAY_JOURNAL``, on by
default) ``start`` first restores what a crashed predecessor journaled, and a clean
``drain`` leaves no journal behind; with the outage spool (``KAFKA_RELAY_SPOOL_MAX_BYTES``)
SHUTDOWN spills what still waits on disk. The ledger owns the lock; the engine never
takes it.
"""

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException

from kafka_relay.config import Config
from kafka_relay.delivery.budget import buffer_limits, drain_plan
from kafka_relay.delivery.journal import Journal
from kafka_relay.delivery.ledger import BufferFull, Ledger, Limits, Watch
from kafka_relay.delivery.outage import refill, spill_parked
from kafka_relay.delivery.overflow import OverflowSpool, free_space
from kafka_relay.delivery.pump import ProducerLike, Pump
from kafka_relay.delivery.reachability import Reachability
from kafka_relay.delivery.recovery import (
    RingReader,
    RingRecovery,
    recover_journal,
    release_journal,
)
from kafka_relay.delivery.rings import RING_RELEASE_S, Entry
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import BrokerState
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillChain

__all__ = ["BufferFull", "DeliveryEngine", "DrainReport", "FlushResult", "Gauge", "Watch"]

_PROBE_POLL_S = 0.02


class FlushResult(NamedTuple):
    delivered: int
    dead_lettered: int
    spilled: int
    remaining: int
    duration_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return self._asdict()


class Gauge(NamedTuple):
    """The engine's counts and depth, in one look."""

    counts: dict[str, int]
    pending: int
    pending_bytes: int
    oldest_pending_ms: int  # age of the oldest unsettled record (0 when none)
    broker_state: BrokerState
    failure: str | None  # why the pump stopped for good (None while it runs)
    by_request: dict[str, dict[str, int]]  # see gauge()

    @property
    def reached_kafka(self) -> int:
        """Records Kafka took (delivered or dead-lettered): what tells the broker answers."""
        return self.counts["delivered"] + self.counts["dead_lettered"]


class DrainReport(NamedTuple):
    reason: str
    duration_ms: int
    flush_ms: float
    drained: int  # delivered or dead-lettered during the drain
    spilled_at_shutdown: int
    pending: int
    unaccounted: int
    pump_error: str | None  # the pump died before SHUTDOWN (its records were spilled then)
    counts: dict[str, int]

    def as_log(self) -> dict[str, Any]:
        """The fields of the ``shutdown.summary`` line."""
        fields = {k: v for k, v in self._asdict().items() if k not in ("counts", "flush_ms")}
        return {**fields, **self.counts}


class DeliveryEngine:
    def __init__(self, config: Config, *, producer_factory: Callable[[], ProducerLike],
                 spill: SpillChain, logger: JsonLogger, limits: Limits | None = None,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 monotonic: Callable[[], float] = time.monotonic,
                 defer_producer: bool = False,
                 on_thaw: Callable[[ProducerLike], None] | None = None,
                 read_ring: RingReader | None = None) -> None:
        """``read_ring``: the handoff's reader of a ring body, to take over ring files (none:
        the ring transport is off). Without the journal (no crash durability) ring files are
        taken over without producing what they hold: dead writers' files are deleted, live
        writers' rings consumed."""
        plan = buffer_limits(config, spool_free_bytes=free_space(config.spool_dir))
        if plan.over:
            logger.warning("buffer.limits_over_spill_budget", variables=list(plan.over),
                           safe_records=plan.safe.records, safe_bytes=plan.safe.bytes,
                           hint="records past the safe limits may not be spilled before a "
                                "SHUTDOWN deadline; lower or unset these variables")
        if plan.spool_over:
            safe_spool = plan.spool_safe
            logger.warning("overflow.limit_over_spill_budget",
                           variable="KAFKA_RELAY_SPOOL_MAX_BYTES", limit_bytes=plan.spool.bytes,
                           safe_bytes=safe_spool.bytes, safe_batches=safe_spool.batches,
                           safe_records=safe_spool.records,
                           hint="batches parked past what SHUTDOWN can spill are lost if the "
                                "broker is down at SHUTDOWN: set KAFKA_RELAY_SPILL_BUCKET, or "
                                "lower or unset KAFKA_RELAY_SPOOL_MAX_BYTES")
        self._config = config
        self._spill = spill
        self._log = logger
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        # On demand, the invocation running now: records that arrive without a request id
        # are its records (one invocation at a time), so the logs can attribute them.
        self.invocation_id: str | None = None
        retry_after = max(100, min(5_000, config.retry_backoff_ms))
        journal = Journal(config.journal_dir, logger) if config.journal else None
        if journal is not None:
            journal.open()
        self._journal = journal
        overflow = (OverflowSpool(config.spool_dir / "overflow", plan.spool, logger)
                    if plan.spool.bytes > 0 else None)
        self._overflow = overflow
        self._ledger = Ledger(limits or plan.limits, retry_after_ms=retry_after,
                              monotonic=monotonic, journal=journal, logger=logger,
                              overflow=overflow)
        # What fits of the outage spool back into memory, before newer batches are taken.
        # Public for the ring listener: the rings, and taking over a live writer's ring.
        self.ring_recovery = None if read_ring is None else RingRecovery(
            self._ledger, config, read=read_ring if config.journal else None,
            spill=spill.spill, logger=logger)
        self._refill: Callable[[], int] = (
            (lambda: 0) if overflow is None else functools.partial(refill, self._ledger, overflow))
        # Public for tests that step it by hand; outside delivery/ only its ``failure`` is read.
        self.pump = Pump(self._ledger, config, producer_factory=producer_factory,
                         spill=spill.spill, logger=logger, wall_ms=wall_ms, monotonic=monotonic,
                         defer_build=defer_producer, on_thaw=on_thaw)
        self.reachability = Reachability(self, wall_ms=wall_ms, monotonic=monotonic)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Restore what a crashed predecessor journaled, then deliver (building the producer
        first when it was deferred: SnapStart's restore)."""
        self.recover_journal()
        if self.ring_recovery is not None:
            self.ring_recovery.at_start()
        self.pump.start()

    def stop(self) -> None:
        """Stop without draining (tests; an init that fails): the journal stays for the next
        init, as a killed process leaves it."""
        self.pump.stop()
        release_journal(self._ledger, self._journal, clean=False)
        self._ledger.rings.close()

    def recover_journal(self) -> int:
        """Own again what a dead predecessor journaled; the records restored."""
        recovery = recover_journal(self._ledger, self._journal, self._spill.spill)
        if recovery is None:
            return 0
        if recovery.files:
            self._log.warning("journal.restored", records=recovery.records, files=recovery.files,
                              recovered=recovery.recovered, dir=str(self._config.journal_dir))
        return recovery.records

    def thawed(self, *, restored: bool = False) -> None:
        """At each INVOKE (after a freeze): the pump runs its ``on_thaw`` before producing.
        ``restored`` (from a snapshot): the pump builds a new producer first."""
        self.pump.thawed(restored=restored)

    def on_client_error(self, error: KafkaError) -> None:
        self.reachability.note_client_error(error)
        self.pump.on_client_error(error)

    def probe(self, timeout_s: float, *,
              unreachable: Callable[[], str | None] = lambda: None) -> str | None:
        """Open the first broker connection: the error when the broker did not answer within
        ``timeout_s``, else None. The metadata request runs on a helper thread so that
        ``unreachable()`` naming a transport error (checked every few ms) ends the wait."""
        answer: list[str | None] = []
        done = threading.Event()
        producer = self.pump.producer

        def ask() -> None:
            try:
                producer.list_topics(timeout=timeout_s)
                answer.append(None)
            except KafkaException as exc:
                answer.append(str(exc.args[0]))
            finally:
                done.set()

        threading.Thread(target=ask, name="kafka-relay-probe", daemon=True).start()
        while not done.wait(_PROBE_POLL_S):
            given_up = unreachable()
            if given_up is not None:
                return given_up
        if answer[0] is None:
            self.pump.broker_state = BrokerState.UP
        return answer[0]

    # -- records -----------------------------------------------------------------------------

    def accept(self, records: Sequence[Record], *, watch: bool = False,
               entry: Entry | None = None) -> Watch | None:
        """Own all of ``records`` (BufferFull: none). ``watch``: a handle to wait on.
        ``entry``: the ring entry they came in (their journal)."""
        invocation = self.invocation_id
        dlq_of: dict[str, str] = {}  # one string per topic, not one per record
        for record in records:
            if not record.request_id:
                record.request_id = invocation
            if not record.dlq_topic:
                topic = record.topic
                dlq = dlq_of.get(topic)
                if dlq is None:
                    dlq = dlq_of[topic] = self._config.dlq_for(topic)
                record.dlq_topic = dlq
        self._refill()
        return self._ledger.accept(records, watch=watch, entry=entry)

    def note_rejected(self, records: int) -> None:
        """Records refused by validation (400): never accepted, but counted."""
        self._ledger.note_rejected(records)

    def restore_spool(self) -> int:
        """Re-own what earlier invocations parked in the /tmp spool (sent first), and what
        fits of the outage spool."""
        if self.pump.failure is not None:
            return 0  # nobody would send them: leave the files for the next environment
        spooled = self._spill.take_spooled()
        # Nothing spooled (every invocation but a few): no ledger lock, no pump wake-up.
        restored = (self._ledger.restore(spooled) if spooled else 0) + self._refill()
        if restored:
            self._log.info("spool.restored", records=restored)
        return restored

    def flush(self, timeout_s: float, *, retry_now: bool = False) -> FlushResult:
        """Push everything due to Kafka and wait for the outcomes, at most ``timeout_s``.
        ``retry_now`` also sends records still waiting out a retry backoff."""
        # Nothing owned (a len() read, atomic): no ledger read, no pump wake-up, no flush.
        if not self._ledger.unsettled and not self._overflow:
            return FlushResult(0, 0, 0, 0, 0.0)
        start = self._monotonic()
        before = self._ledger.state(storage=False).counts
        self._ledger.wait_idle(start + max(0.0, timeout_s), now_ms=self._wall_ms,
                               stopped=lambda: self.pump.failure is not None,
                               retry_now=retry_now, more=self._refill)
        state = self._ledger.state(storage=False)
        after = state.counts
        return FlushResult(
            delivered=after["delivered"] - before["delivered"],
            dead_lettered=after["dead_lettered"] - before["dead_lettered"],
            spilled=after["spilled"] - before["spilled"],
            remaining=state.pending,
            duration_ms=round((self._monotonic() - start) * 1000, 3),
        )

    def drain(self, deadline_ms: int, *, reason: str) -> DrainReport:
        """SHUTDOWN: accept nothing more, restore the spool, flush until the deadline minus the
        margin and the time spilling the rest takes (sized in bytes), then spill the rest
        (S3 or log lines: /tmp dies with the environment) and stop the pump."""
        started = self._wall_ms()
        self._ledger.close("the extension is shutting down and accepts no more records")
        self._spill.final = True
        self.restore_spool()
        before = self._ledger.state()
        plan = drain_plan(deadline_ms=deadline_ms, margin_ms=self._config.shutdown_margin_ms,
                          pending=before.pending, pending_bytes=before.pending_bytes,
                          has_bucket=self._spill.s3 is not None,
                          memory_mb=self._config.function_memory_mb,
                          parked=(0, 0, 0) if self._overflow is None else self._overflow.load)
        drained = self.flush(max(0, plan.flush_until_ms - self._wall_ms()) / 1000, retry_now=True)
        self._spill.until(self._monotonic() + max(0, plan.s3_until_ms - self._wall_ms()) / 1000)
        spilled = self.spill_unsettled(f"shutdown ({reason}) before delivery")
        # /tmp goes with the environment: what waits in the outage spool is spilled too.
        end = deadline_ms - self._config.shutdown_margin_ms
        parked, left = (0, 0) if self._overflow is None else spill_parked(
            self._ledger, self._overflow, self._spill.spill,
            f"shutdown ({reason}) before delivery", until=lambda: self._wall_ms() >= end)
        spilled += parked
        if left:
            self._log.error("overflow.left_at_shutdown", records=left,
                            hint="the SHUTDOWN deadline passed before the disk spool was "
                                 "spilled: set KAFKA_RELAY_SPILL_BUCKET, or lower "
                                 "KAFKA_RELAY_SPOOL_MAX_BYTES")
        self.pump.stop(join_s=max(0.0, min(0.2, (deadline_ms - self._wall_ms()) / 1000)))
        # Everything settled: leave nothing behind.
        release_journal(self._ledger, self._journal, clean=True)
        self._ledger.rings.release(self._monotonic() + max(0.0, min(
            RING_RELEASE_S, (end - self._wall_ms()) / 1000)), monotonic=self._monotonic)
        state = self._ledger.state()
        return DrainReport(
            reason=reason, duration_ms=self._wall_ms() - started, flush_ms=drained.duration_ms,
            drained=drained.delivered + drained.dead_lettered, spilled_at_shutdown=spilled,
            pending=state.pending, unaccounted=state.unaccounted,
            pump_error=self.pump.failure, counts=state.counts,
        )

    def spill_unsettled(self, reason: str) -> int:
        """Spill everything unsettled (SHUTDOWN's last step, also after a failed drain)."""
        return self._ledger.spill_unsettled(self._spill.spill, reason)

    # -- reading -------------------------------------------------------------------------

    def gauge(self, *, take_outcomes: bool = False) -> Gauge:
        """``take_outcomes``: also what changed per request id since the last take
        (``by_request``), taken with the counts so the two agree."""
        state = self._ledger.state(take_outcomes=take_outcomes, storage=False)
        oldest = state.oldest_accepted_ms
        return Gauge(counts=state.counts, pending=state.pending, pending_bytes=state.pending_bytes,
                     oldest_pending_ms=0 if oldest is None else max(0, self._wall_ms() - oldest),
                     broker_state=self.pump.broker_state, failure=self.pump.failure,
                     by_request=state.by_request)

    def status(self) -> dict[str, Any]:
        """The engine's part of /v1/status (the loop's part is added by the route)."""
        limits = self._ledger.limits
        return {**self._ledger.state().as_status(),
                "limits": {"records": limits.records, "bytes": limits.bytes},
                "broker_state": self.pump.broker_state.value,
                "last_error": self.pump.last_error,
                "pump": {"healthy": self.pump.failure is None, "error": self.pump.failure}}
