"""The delivery engine's facade, the one surface handoff and lifecycle use.

``accept`` → the ledger (BufferFull past the limits), the pump delivers,
``flush`` waits for outcomes, ``drain`` runs SHUTDOWN (restore the spool → flush
→ spill the rest, keeping back the time the spill takes). ``healthy`` turns
False when the pump died; everything it held was spilled by then and
``failure`` says why (the lifecycle reports it as an exit error). With the
journal (``KAFKA_RELAY_JOURNAL``, on by default), ``start`` first restores what a crashed
predecessor journaled, and a clean ``drain`` leaves no journal behind. The journal is on
by default; a batch it cannot write is refused (507), never accepted unjournaled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from kafka_relay.config import Config
from kafka_relay.delivery.budget import buffer_limits, drain_plan
from kafka_relay.delivery.journal import MAX_RECOVERIES, Journal
from kafka_relay.delivery.ledger import BufferFull, Ledger, Limits, Watch
from kafka_relay.delivery.pump import ProducerLike, Pump
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import BrokerState, Refusal
from kafka_relay.record import Record
from kafka_relay.spill.overflow import OverflowSpool, SpoolFull, derived_limit
from kafka_relay.spill.sinks import SpillChain

__all__ = ["BufferFull", "DeliveryEngine", "DrainReport", "FlushResult", "Watch"]


@dataclass(frozen=True)
class FlushResult:
    delivered: int
    dead_lettered: int
    spilled: int
    remaining: int
    duration_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DrainReport:
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
        fields = {k: v for k, v in self.__dict__.items() if k not in ("counts", "flush_ms")}
        return {**fields, **self.counts}


class DeliveryEngine:
    def __init__(self, config: Config, *, producer_factory: Callable[[], ProducerLike],
                 spill: SpillChain, logger: JsonLogger, limits: Limits | None = None,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 monotonic: Callable[[], float] = time.monotonic,
                 defer_producer: bool = False,
                 on_thaw: Callable[[ProducerLike], None] | None = None) -> None:
        plan = buffer_limits(config)
        if plan.over:
            logger.warning("buffer.limits_over_spill_budget", variables=list(plan.over),
                           safe_records=plan.safe.records, safe_bytes=plan.safe.bytes,
                           hint="records past the safe limits may not be spilled before a "
                                "SHUTDOWN deadline; lower or unset these variables")
        self._config = config
        self._spill = spill
        self._log = logger
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self.failure: str | None = None
        # The lifecycle's flush control (breaker, auto), published by its listener for status.
        self.flush_control: dict[str, Any] = {}
        retry_after = max(100, min(5_000, config.retry_backoff_ms))
        journal = Journal(config.journal_dir, logger) if config.journal else None
        if journal is not None:
            journal.open()
        self._ledger = Ledger(limits or plan.limits, retry_after_ms=retry_after,
                              monotonic=monotonic, journal=journal)
        self._retry_after_ms = retry_after
        spool_limit = derived_limit(config.spool_max_bytes, config.spool_dir)
        # Outage ride-through (spill/overflow.py): guarded by the ledger's condition.
        self._overflow = (OverflowSpool(config.spool_dir / "overflow", spool_limit, logger)
                          if spool_limit > 0 else None)
        self.pump = Pump(self._ledger, config, producer_factory=producer_factory,
                         spill=spill.spill, logger=logger, on_death=self._pump_died,
                         wall_ms=wall_ms, defer_build=defer_producer, on_thaw=on_thaw)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Restore what a crashed predecessor journaled, then deliver."""
        self.recover_journal()
        self.pump.start()

    def start_producer(self) -> None:
        """``defer_producer`` (SnapStart): build the producer, then start the pump. Until
        then no broker connection and no producer identity exist, so none is in a snapshot."""
        self.pump.build_producer()
        self.start()

    def stop(self) -> None:
        """Stop without draining (tests; an init that fails): the journal stays for the next
        init, as a killed process leaves it."""
        self.pump.stop()
        with self._ledger.cond:
            if self._ledger.journal is not None:
                self._ledger.journal.release()

    def recover_journal(self) -> int:
        """Own again the records a dead predecessor journaled (counted ``restored``, same
        ids). Records that came back ``MAX_RECOVERIES`` times without settling are spilled
        instead: a record that kills the process must not kill every next one too."""
        ledger = self._ledger
        with ledger.cond:
            journal = ledger.journal
            if journal is None or not journal.enabled:
                return 0
            left = journal.leftovers()
            restored = ledger.restore(left.records, recovered=left.recovered + 1)
            if journal.enabled:  # their records are journaled again: the old files can go
                journal.discard(left.files)
        if left.files:
            self._log.warning("journal.restored", records=restored, files=len(left.files),
                              recovered=left.recovered + 1, dir=str(journal.directory))
        if restored and left.recovered >= MAX_RECOVERIES:
            records = [r for r in left.records if ledger.holds(r)]
            ledger.settle_spilled(records, self._spill.spill(
                records, retry_later=False,
                reason=f"restored from the journal {left.recovered} times and the extension "
                       "died each time before they settled"))
        return restored

    def before_invoke(self) -> None:
        """At each INVOKE (after a freeze): the pump runs its ``on_thaw`` before producing."""
        self.pump.thawed()

    @property
    def healthy(self) -> bool:
        """False once the pump died (``failure`` says why); poll it to report an exit error."""
        return self.failure is None

    @property
    def broker_state(self) -> BrokerState:
        return self.pump.broker_state

    @property
    def producer(self) -> ProducerLike:
        """The current producer (the same object across invocations until a rebuild)."""
        return self.pump.producer

    def on_client_error(self, error: KafkaError) -> None:
        self.pump.on_client_error(error)

    # -- records -----------------------------------------------------------------------------

    def accept(self, records: Sequence[Record], *, watch: bool = False) -> Watch | None:
        """Own all of ``records`` (BufferFull: none). ``watch``: a handle for wait_settled.
        What does not fit in memory goes to the disk spool, behind what already waits there."""
        overflow = self._overflow
        if overflow is None:
            return self._ledger.accept(records, watch=watch)
        self.refill()
        # Read unlocked: a refill racing it at worst parks a batch that would have fit.
        return self._ledger.accept(records, watch=watch, park=self._park,
                                   park_first=bool(overflow))

    def _park(self, records: Sequence[Record]) -> str:
        assert self._overflow is not None
        try:
            return str(self._overflow.put(list(records)))
        except SpoolFull as exc:
            raise BufferFull(self._retry_after_ms, str(exc), Refusal.STORAGE) from exc

    def refill(self) -> int:
        """Take the oldest spooled batches back into memory while they fit (journaled before
        their files go); the number of records taken."""
        overflow, ledger = self._overflow, self._ledger
        if not overflow:
            return 0
        taken = 0
        with ledger.cond:
            while overflow and (parked := overflow.oldest()) is not None:
                if not ledger.room_for(len(parked.records), parked.size):
                    break
                taken += ledger.restore(parked.records)
                overflow.remove_oldest(parked)
        return taken

    def note_rejected(self, records: int) -> None:
        """Records refused by validation (400): never accepted, but counted."""
        self._ledger.note_rejected(records)

    def wait_settled(self, watch: Watch, timeout_s: float) -> list[dict[str, str | None]]:
        return self._ledger.wait_settled(watch, timeout_s)

    def restore_spool(self) -> int:
        """Re-own what earlier invocations parked in the /tmp spool (sent first), and what
        fits of the outage spool."""
        if not self.healthy:
            return 0  # nobody would send them: leave the files for the next environment
        restored = self._ledger.restore(self._spill.take_spooled()) + self.refill()
        if restored:
            self._log.info("spool.restored", records=restored)
        return restored

    def flush(self, timeout_s: float, *, retry_now: bool = False) -> FlushResult:
        """Push everything due to Kafka and wait for the outcomes, at most ``timeout_s``.
        ``retry_now`` also sends records still waiting out a retry backoff."""
        start = self._monotonic()
        deadline = start + max(0.0, timeout_s)
        ledger, queue = self._ledger, self._ledger.queue
        with ledger.cond:
            before = ledger.counts.as_dict()
            if retry_now:
                queue.release_retries()
            queue.flush_requests += 1
            ledger.cond.notify_all()
            try:
                while (self.healthy and (queue.has_due_work(self._wall_ms()) or self.refill())
                       and self._monotonic() < deadline):
                    ledger.cond.wait(min(0.05, max(0.001, deadline - self._monotonic())))
            finally:
                queue.flush_requests -= 1
            after = ledger.counts.as_dict()
            return FlushResult(
                delivered=after["delivered"] - before["delivered"],
                dead_lettered=after["dead_lettered"] - before["dead_lettered"],
                spilled=after["spilled"] - before["spilled"],
                remaining=ledger.depth()[0],
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
        pending, nbytes = self._ledger.depth()
        plan = drain_plan(deadline_ms=deadline_ms, margin_ms=self._config.shutdown_margin_ms,
                          pending=pending, pending_bytes=nbytes,
                          has_bucket=self._spill.s3 is not None,
                          memory_mb=self._config.function_memory_mb)
        drained = self.flush(max(0, plan.flush_until_ms - self._wall_ms()) / 1000, retry_now=True)
        self._spill.until(self._monotonic() + max(0, plan.s3_until_ms - self._wall_ms()) / 1000)
        spilled = self.spill_unsettled(f"shutdown ({reason}) before delivery")
        spilled += self._spill_overflow(deadline_ms, f"shutdown ({reason}) before delivery")
        self.pump.stop(join_s=max(0.0, min(0.2, (deadline_ms - self._wall_ms()) / 1000)))
        with self._ledger.cond:
            if self._ledger.journal is not None:  # everything settled: leave nothing behind
                self._ledger.journal.release(remove=self._ledger.depth()[0] == 0)
        return DrainReport(
            reason=reason, duration_ms=self._wall_ms() - started, flush_ms=drained.duration_ms,
            drained=drained.delivered + drained.dead_lettered, spilled_at_shutdown=spilled,
            pending=self._ledger.depth()[0], unaccounted=self._ledger.unaccounted(),
            pump_error=self.failure, counts=self.counts(),
        )

    def _spill_overflow(self, deadline_ms: int, reason: str) -> int:
        """SHUTDOWN: /tmp goes with the environment, so what still waits in the outage spool
        is spilled (S3 or log lines), oldest batch first, while the deadline allows."""
        overflow, ledger = self._overflow, self._ledger
        spilled = 0
        with ledger.cond:
            while overflow and self._wall_ms() < deadline_ms - self._config.shutdown_margin_ms:
                parked = overflow.oldest()
                if parked is None:
                    break
                self._spill.spill(parked.records, reason=reason, retry_later=False)
                overflow.remove_oldest(parked)
                spilled += len(parked.records)
            if overflow:
                self._log.error("overflow.left_at_shutdown", records=overflow.records,
                                bytes=overflow.bytes, hint="the SHUTDOWN deadline passed "
                                "before the disk spool was spilled: set "
                                "KAFKA_RELAY_SPILL_BUCKET, or lower KAFKA_RELAY_SPOOL_MAX_BYTES")
        return spilled

    def spill_unsettled(self, reason: str) -> int:
        """Spill everything unsettled. A late delivery report of one of them is a duplicate
        under the same x-relay-id, never a second count."""
        records = self._ledger.unsettled()
        if records:
            self._ledger.settle_spilled(records, self._spill.spill(records, reason=reason,
                                                                   retry_later=False))
        return len(records)

    def _pump_died(self, exc: BaseException) -> None:
        self.failure = f"{type(exc).__name__}: {exc}"
        self._ledger.close(f"the delivery pump stopped ({self.failure}): the extension accepts "
                           "no more records; the function should be redeployed or retried")
        self._log.error("pump.died", error=self.failure)
        try:
            self.spill_unsettled(f"the delivery pump stopped: {self.failure}")
        finally:
            with self._ledger.cond:
                self._ledger.cond.notify_all()

    # -- reading -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._ledger.cond:
            return self._ledger.counts.as_dict()

    def depth(self) -> tuple[int, int]:
        """(pending records, pending bytes)."""
        return self._ledger.depth()

    def oldest_pending_ms(self) -> int:
        """Age of the oldest unsettled record (0 when none)."""
        oldest = self._ledger.oldest_accepted_ms()
        return 0 if oldest is None else max(0, self._wall_ms() - oldest)

    def status(self) -> dict[str, Any]:
        ledger = self._ledger
        with ledger.cond:
            pending, nbytes = ledger.depth()
            return {
                "counts": ledger.counts.as_dict(),
                "pending": pending,
                "pending_bytes": nbytes,
                "unaccounted": ledger.unaccounted(),
                "in_flight": ledger.queue.in_flight,
                "waiting_retry": ledger.queue.waiting_retry(),
                "limits": {"records": ledger.limits.records, "bytes": ledger.limits.bytes},
                "broker_state": self.pump.broker_state.value,
                "last_error": self.pump.last_error,
                "pump": {"healthy": self.healthy, "error": self.failure},
                "journal": (ledger.journal.status() if ledger.journal is not None
                            else {"enabled": False}),
                "overflow": (self._overflow.status() if self._overflow is not None
                             else {"enabled": False}),
                "flush_control": dict(self.flush_control),
            }
