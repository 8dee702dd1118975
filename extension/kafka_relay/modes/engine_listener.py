"""The lifecycle Listener, implemented on the delivery engine and the handler-done signals.

The loop calls these methods; they call the engine (restore / flush / drain) and wait on
the signals the handoff server and Telemetry feed. Every mode drives one (managed
instances wrap it for their background loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from kafka_relay.config import EXTENSION_SHUTDOWN_MS, Config
from kafka_relay.delivery.engine import DeliveryEngine, DrainReport, Gauge
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent
from kafka_relay.lifecycle.listener import FlushReport, ShutdownSummary
from kafka_relay.lifecycle.policy import Observed
from kafka_relay.observability.log import JsonLogger
from kafka_relay.observability.metrics import carrying, emf_line
from kafka_relay.protocol import BrokerState

T = TypeVar("T")

# A handler whose end nothing signals (no decorator, no client end call, no telemetry) is
# taken as done once no record has arrived for the quiet period, at most after the cap.
UNSIGNALLED_QUIET_S = 0.3
UNSIGNALLED_CAP_S = 2.0
_POLL_S = 0.05
# A flush that settles nothing for this long while records are pending gives up early (the
# broker does not answer: the breaker takes over). A broker that has answered before settles
# in milliseconds, or reconnects within a second or so after a connection dropped while the
# environment was frozen; before its first delivery (connection, metadata, topic creation)
# it may take longer.
# While librdkafka reports failed connection attempts (the broker is gone, not reconnecting:
# delivery/reachability.py) the flush gives up after this much without progress instead.
STALL_S = 1.5
FIRST_CONTACT_STALL_S = 3.0
GONE_STALL_S = 0.2
_FLUSH_SLICE_S = 0.1


class EngineListener:
    def __init__(
        self,
        *,
        config: Config,
        engine: DeliveryEngine,
        signals: HandlerSignals,
        logger: JsonLogger,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._config = config
        self._engine = engine
        self._signals = signals
        self._log = logger
        self._wall_ms = wall_ms
        self._reported = engine.gauge().counts
        # An invocation that did not wait for its handler is reported when the next event
        # arrives (the handler is over by then), so its line counts its own records.
        self._unreported: str | None = None
        self.invocations = 0
        self.telemetry = False  # subscribed to Telemetry: every handler end is signalled
        self._unsignalled = 0  # bounded waits that ended without any end signal
        self._warned_unsignalled = False
        # The loop's flush control (breaker, auto), as last published, for /v1/status.
        self.flush_control: dict[str, object] = {}
        # Released last at SHUTDOWN (Telemetry receiver, handoff server), in order.
        self.closers: list[Callable[[], None]] = []

    # -- INVOKE ---------------------------------------------------------------------------

    def on_invoke(self, event: InvokeEvent) -> None:
        self._report_unreported()
        self.invocations += 1
        self._log.request_id = event.request_id or None
        self._engine.invocation_id = event.request_id or None
        self._engine.thawed()  # e.g. a fresh MSK IAM token before the pump produces
        self._engine.restore_spool()  # logs spool.restored itself

    def handler_done(self, request_id: str, timeout_s: float) -> bool:
        if self.telemetry or self._signals.seen_any:
            return self._signals.wait(request_id, timeout_s)
        return self._wait_unsignalled(request_id, min(timeout_s, UNSIGNALLED_CAP_S))

    def _wait_unsignalled(self, request_id: str, timeout_s: float) -> bool:
        """No end signal has ever arrived here: wait until records stop arriving, bounded,
        instead of the whole invocation; say once how to fix it."""
        start = time.monotonic()
        accepted, quiet_since = self._engine.gauge().counts["accepted"], start
        ended_by = "cap"
        while (now := time.monotonic()) - start < timeout_s:
            if self._signals.wait(request_id, min(_POLL_S, timeout_s - (now - start))):
                return True
            seen = self._engine.gauge().counts["accepted"]
            now = time.monotonic()
            if seen != accepted:
                accepted, quiet_since = seen, now
            elif now - quiet_since >= UNSIGNALLED_QUIET_S:
                ended_by = "quiet"
                break
        self._unsignalled += 1
        # The first wait may just have been a slow decorated handler: warn on the second.
        if self._unsignalled >= 2 and not self._warned_unsignalled:
            self._warned_unsignalled = True
            self._log.warning(
                "handler.end_unsignalled", ended_by=ended_by,
                waited_ms=round((time.monotonic() - start) * 1000),
                hint="nothing signals when the handler is done, so kafka-relay waits until "
                     "records stop arriving (at most 2 s) before flushing: decorate the "
                     "handler with kafka_relay.client.relay_handler (or call the client's "
                     "invocation_end()), or set KAFKA_RELAY_TELEMETRY=true")
        return False

    def observe(self) -> Observed:
        gauge = self._engine.gauge()
        return Observed(pending=gauge.pending, oldest_pending_ms=gauge.oldest_pending_ms,
                        settled=gauge.reached_kafka,
                        broker_up=gauge.broker_state is BrokerState.UP, stopped=gauge.failure)

    def stopped(self) -> str | None:
        return self._engine.pump.failure

    def flush(self, budget_ms: int) -> FlushReport:
        """Flush in slices; stop once nothing has settled for ``STALL_S`` (before the first
        delivery ``FIRST_CONTACT_STALL_S``, while connection attempts fail ``GONE_STALL_S``)
        while records are pending (the broker does not answer: the breaker takes over), or
        once nothing is due."""
        start = time.monotonic()
        deadline = start + budget_ms / 1000
        settled, last_progress = 0, start
        stall_s: float | None = None  # asked only when a slice leaves records pending
        while True:
            slice_s = max(0.0, min(_FLUSH_SLICE_S, deadline - time.monotonic()))
            result = self._engine.flush(slice_s)
            settled += result.delivered + result.dead_lettered
            now = time.monotonic()
            if result.delivered or result.dead_lettered or result.spilled:
                last_progress = now
            if not result.remaining or now >= deadline:
                break
            if result.duration_ms < slice_s * 500:  # returned early: all waiting out a backoff
                break
            if stall_s is None:
                stall_s = (STALL_S if self._engine.gauge().counts["delivered"]
                           else FIRST_CONTACT_STALL_S)
            stalled_s = now - last_progress
            gone = stalled_s >= GONE_STALL_S and self._engine.reachability.gone()
            if gone or stalled_s >= stall_s:
                self._log.warning("flush.stalled", remaining=result.remaining,
                                  stalled_ms=round(stalled_s * 1000), broker_gone=gone)
                break
        return FlushReport(duration_ms=round((time.monotonic() - start) * 1000, 3),
                           remaining=result.remaining, settled=settled)

    def publish(self, status: Mapping[str, object]) -> None:
        self.flush_control = dict(status)  # replaced whole: /v1/status reads it unlocked

    def ends_called(self) -> bool:
        return self._signals.called

    def invocation_done(self, event: InvokeEvent, flush: FlushReport | None, *,
                        deferred: bool = False) -> None:
        if deferred:  # its handler ended: the pump sends its records, then waits for the next
            self._engine.pump.hold()
            self._report(0.0)
            return
        self._engine.pump.hold(False)
        if flush is None:  # not flushed (breaker open): its handler may still run
            self._unreported = event.request_id or None
            return
        self._report(flush.duration_ms)

    def _report_unreported(self) -> None:
        if self._unreported is not None:
            request_id, self._unreported = self._unreported, None
            self._report(0.0, request_id=request_id)

    # -- SHUTDOWN -------------------------------------------------------------------------

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        """Drain (the engine restores, flushes and spills within the deadline), release
        everything, summarise. Every step runs even if an earlier one raised: whatever the
        drain could not settle is spilled by a last step of its own."""
        self._report_unreported()
        # What SHUTDOWN logs belongs to no invocation (records say their own request ids).
        self._log.request_id = self._engine.invocation_id = None
        started = self._wall_ms()
        deadline_ms = event.deadline_ms or started + EXTENSION_SHUTDOWN_MS
        failed: list[str] = []

        def step(name: str, action: Callable[[], T], default: T) -> T:
            try:
                return action()
            except Exception as exc:
                failed.append(name)
                self._log.error("shutdown.step_failed", step=name, error=repr(exc))
                return default

        report: DrainReport | None = step(
            "drain", lambda: self._engine.drain(deadline_ms, reason=event.reason), None)
        spilled_late = 0
        if report is None:
            spilled_late = step("spill", lambda: self._engine.spill_unsettled(
                f"shutdown ({event.reason}) after a failed drain"), 0)
            step("stop_engine", self._engine.stop, None)
        for closer in self.closers:
            step("close", closer, None)
        gauge = self._engine.gauge()
        pending = gauge.pending
        status = self._engine.status()
        summary = ShutdownSummary(
            drained=report.drained if report else 0,
            spilled=(report.spilled_at_shutdown if report else 0) + spilled_late,
            pending=pending, unaccounted=int(status["unaccounted"]),
            failed_steps=tuple(failed),
        )
        fields = report.as_log() if report else {"reason": event.reason, **gauge.counts}
        fields.update(duration_ms=self._wall_ms() - started, pending=pending,
                      unaccounted=summary.unaccounted, spilled_at_shutdown=summary.spilled)
        self._log.info("shutdown.summary", invocations=self.invocations,
                       failed_steps=list(failed), **fields)
        self._report(report.flush_ms if report else 0.0, invocation=False)
        return summary

    # -- reporting ------------------------------------------------------------------------

    def _report(self, flush_ms: float, *, invocation: bool = True,
                request_id: str | None = None) -> None:
        """An ``invocation.done`` line carrying the EMF metrics (at SHUTDOWN an EMF line
        alone): the change since the last report (``request_id``: of an invocation reported
        late)."""
        delta, gauge = self.take_delta(at="invocation" if invocation else "shutdown")
        done = None
        if invocation:
            fields: dict[str, object] = {
                "accepted": delta["accepted"], "delivered": delta["delivered"],
                "dead_lettered": delta["dead_lettered"], "spilled": delta["spilled"],
                "spooled": delta["spooled"], "restored": delta["restored"],
                "pending": gauge.pending, "flush_ms": flush_ms}
            if request_id is not None:
                fields["request_id"] = request_id
            problem = self._engine.reachability.problem(self.flush_control.get("breaker"))
            if problem is None:
                done = self._log.format("INFO", "invocation.done", **fields)
            else:  # the result line itself says the broker is not answering
                done = self._log.format("WARNING", "invocation.done", **fields,
                                        broker=problem["state"], broker_error=problem["error"])
        self.write_metrics(delta, gauge, flush_ms=flush_ms, carrier=done)

    def take_delta(self, *, at: str = "period") -> tuple[dict[str, int], Gauge]:
        """The counts' change since the last report (every count is reported once), with the
        gauge they were read from, and a ``records.outcomes`` line saying the same per request
        id: the records' own ids, so what settles later is counted for the invocation that
        handed the records over."""
        gauge = self._engine.gauge(take_outcomes=True)
        now, by_request = gauge.counts, gauge.by_request
        delta = {k: now[k] - self._reported[k] for k in now}
        self._reported = now
        if by_request:
            self._log.info("records.outcomes", at=at, by_request=by_request)
        return delta, gauge

    def write_metrics(self, delta: dict[str, int], gauge: Gauge, *,
                      flush_ms: float | None = None, carrier: str | None = None) -> None:
        """The CloudWatch EMF metrics of ``delta`` (FlushMs when a flush was timed; the depth
        from ``gauge``): on the log line ``carrier`` when there is one, else a line of
        their own."""
        breaker = self.flush_control.get("breaker")
        metrics: dict[str, float] = {
            "RecordsAccepted": delta["accepted"],
            "RecordsDelivered": delta["delivered"],
            "RecordsDeadLettered": delta["dead_lettered"],
            "DeadLetterFailures": delta["dead_letter_failed"],
            "RecordsSpilled": delta["spilled"],
            "RecordsSpooled": delta["spooled"],
            "RecordsRestored": delta["restored"],
            "RecordsRejected": delta["rejected"],
            "BufferDepth": gauge.pending,
            "OldestPendingMs": gauge.oldest_pending_ms,
            "BreakerOpen": int(isinstance(breaker, dict) and breaker.get("state") == "open"),
        }
        if flush_ms is not None:
            metrics["FlushMs"] = flush_ms
        line = emf_line(metrics, function_name=self._config.function_name,
                        timestamp_ms=self._wall_ms())
        self._log.write_raw(line if carrier is None else carrying(carrier, line))
