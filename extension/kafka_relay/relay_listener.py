"""The lifecycle Listener, implemented on the delivery engine and the handler-done signals.

The only place that knows both sides: the loop calls these methods, they call
the engine (flush / restore / spill) and the signals the handoff server feeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kafka_relay.config import Config
from kafka_relay.deadletter.spill import Spiller
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent
from kafka_relay.lifecycle.listener import FlushReport, ShutdownSummary
from kafka_relay.observability.log import JsonLogger
from kafka_relay.observability.metrics import emf_line
from kafka_relay.producer.relay import FlushResult, Relay
from kafka_relay.record import Record

# What spilling at SHUTDOWN costs (measured: packed KAFKA_RELAY_SPILL lines run at well over
# 100k records/s; these leave a margin for a slow log reader).
_SPILL_BASE_MS = 100
_SPILL_US_PER_RECORD = 10
_S3_RESERVE_MS = 500

T = TypeVar("T")


class RelayListener:
    def __init__(
        self,
        *,
        config: Config,
        relay: Relay,
        spiller: Spiller,
        signals: HandlerSignals,
        logger: JsonLogger,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._config = config
        self._relay = relay
        self._spiller = spiller
        self._signals = signals
        self._log = logger
        self._wall_ms = wall_ms
        self._reported = relay.counts.as_dict()
        self.invocations = 0
        # Released last at SHUTDOWN (handoff server, telemetry listener), in order.
        self.closers: list[Callable[[], None]] = []

    # -- INVOKE ---------------------------------------------------------------------------

    def on_invoke(self, event: InvokeEvent) -> None:
        self.invocations += 1
        self._log.request_id = event.request_id or None
        spooled = self._spiller.take_spool()
        if spooled:
            self._log.info("spool.restored", records=self._relay.restore(spooled))

    def handler_done(self, request_id: str, timeout_s: float) -> bool:
        return self._signals.wait(request_id, timeout_s)

    def flush(self, budget_ms: int) -> FlushReport:
        result = self._relay.flush(budget_ms / 1000)
        return FlushReport(duration_ms=result.duration_ms, remaining=result.remaining)

    def invocation_done(self, event: InvokeEvent, flush: FlushReport | None) -> None:
        self._report(flush.duration_ms if flush else 0.0)

    # -- SHUTDOWN -------------------------------------------------------------------------

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        """Stop accepting, drain until the deadline minus a margin, spill the rest, summarise.

        Every step runs even if an earlier one raised: a corrupt spool file must not
        keep the pending records from being spilled."""
        relay, spiller, config = self._relay, self._spiller, self._config
        started = self._wall_ms()
        deadline_ms = event.deadline_ms or started + 1_500
        failed: list[str] = []

        def step(name: str, action: Callable[[], T], default: T) -> T:
            try:
                return action()
            except Exception as exc:
                failed.append(name)
                self._log.error("shutdown.step_failed", step=name, error=repr(exc))
                return default

        def stop_intake() -> None:
            relay.stop_accepting()
            spiller.final = True

        step("stop_accepting", stop_intake, None)
        spooled: list[Record] = step("take_spool", spiller.take_spool, [])
        if spooled:
            step("restore", lambda: relay.restore(spooled), 0)
        # Keep back the time spilling what is left takes: log lines for every pending
        # record, and an S3 put before them when a bucket is set.
        pending, _ = relay.depth()
        log_reserve_ms = _SPILL_BASE_MS + pending * _SPILL_US_PER_RECORD / 1000
        s3_reserve_ms = _S3_RESERVE_MS if config.spill_bucket else 0
        end_ms = deadline_ms - config.shutdown_margin_ms
        budget_ms = end_ms - log_reserve_ms - s3_reserve_ms - self._wall_ms()
        drained = step("drain", lambda: relay.flush(max(0, budget_ms) / 1000, retry_now=True),
                       FlushResult(0, 0, 0, 0, 0.0))
        step("spill_deadline", lambda: spiller.until(
            time.monotonic() + max(0, end_ms - log_reserve_ms - self._wall_ms()) / 1000), None)
        spilled = step("spill", lambda: relay.spill_unsettled(
            reason=f"shutdown ({event.reason}) before delivery"), 0)
        step("stop_engine", relay.stop, None)
        for closer in self.closers:
            step("close", closer, None)
        counts = relay.counts.as_dict()
        pending, _ = relay.depth()
        settled = (counts["delivered"] + counts["dead_lettered"] + counts["spilled"]
                   + counts["spooled"])
        summary = ShutdownSummary(
            drained=drained.delivered + drained.dead_lettered, spilled=spilled, pending=pending,
            unaccounted=counts["accepted"] + counts["restored"] - settled - pending,
            failed_steps=tuple(failed),
        )
        self._log.request_id = None
        self._log.info(
            "shutdown.summary", reason=event.reason, duration_ms=self._wall_ms() - started,
            invocations=self.invocations, drained=summary.drained,
            spilled_at_shutdown=spilled, pending=pending, unaccounted=summary.unaccounted,
            failed_steps=list(failed), **counts,
        )
        self._report(drained.duration_ms, invocation=False)
        return summary

    # -- reporting ------------------------------------------------------------------------

    def _report(self, flush_ms: float, *, invocation: bool = True) -> None:
        """An ``invocation.done`` line (unless at SHUTDOWN) and an EMF line: the change since
        the last report."""
        now = self._relay.counts.as_dict()
        delta = {k: now[k] - self._reported[k] for k in now}
        self._reported = now
        depth, _ = self._relay.depth()
        if invocation:
            self._log.info("invocation.done", accepted=delta["accepted"],
                           delivered=delta["delivered"], dead_lettered=delta["dead_lettered"],
                           spilled=delta["spilled"], spooled=delta["spooled"],
                           restored=delta["restored"], pending=depth, flush_ms=flush_ms)
        self._log.write_raw(emf_line(
            {
                "RecordsAccepted": delta["accepted"],
                "RecordsDelivered": delta["delivered"],
                "RecordsDeadLettered": delta["dead_lettered"],
                "RecordsSpilled": delta["spilled"],
                "RecordsRejected": delta["rejected"],
                "FlushMs": flush_ms,
                "BufferDepth": depth,
            },
            function_name=self._config.function_name, timestamp_ms=self._wall_ms(),
        ))
