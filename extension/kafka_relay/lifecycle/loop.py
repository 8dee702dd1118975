"""The event loop: INVOKE → wait for the handler, flush per policy → /next; SHUTDOWN → drain.

Calling /next lets Lambda freeze the sandbox, so nothing before it is unbounded:
every wait is capped by the invocation's ``deadlineMs`` and the flush budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka_relay.config import Config
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.errors import LambdaApiError
from kafka_relay.handoff.server import HandoffServer, HandoffState
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.lifecycle.policy import Moment, decide
from kafka_relay.lifecycle.signals import HandlerSignals
from kafka_relay.observability.log import JsonLogger
from kafka_relay.observability.metrics import emf_line

# Leave the runtime this much of the invocation for its own /next after our flush.
_INVOKE_MARGIN_MS = 50
# If /next itself fails we have no deadline: drain within Lambda's external budget.
_LOST_API_BUDGET_MS = 1_500


@dataclass
class Parts:
    api: ExtensionsApi | None
    config: Config
    relay: DeliveryEngine
    server: HandoffServer
    state: HandoffState
    signals: HandlerSignals
    logger: JsonLogger
    stop_telemetry: Callable[[], None] = lambda: None


class EventLoop:
    def __init__(
        self, parts: Parts, *, wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    ) -> None:
        self._p = parts
        self._wall_ms = wall_ms
        self._last_flush_ms = wall_ms()
        self._reported = parts.relay.counts()
        self.invocations = 0

    def run(self) -> int:
        p = self._p
        assert p.api is not None, "the event loop needs the Extensions API"
        while True:
            try:
                event = p.api.next_event()
            except LambdaApiError as exc:
                p.logger.error("lifecycle.next_failed", error=str(exc))
                return self.shutdown("next_failed", self._wall_ms() + _LOST_API_BUDGET_MS)
            kind = event.get("eventType")
            if kind == "INVOKE":
                self.invoke(event)
            elif kind == "SHUTDOWN":
                deadline = int(event.get("deadlineMs") or self._wall_ms() + _LOST_API_BUDGET_MS)
                return self.shutdown(str(event.get("shutdownReason", "unknown")), deadline)
            else:
                p.logger.warning("lifecycle.unknown_event", event_type=kind)

    def invoke(self, event: dict[str, Any]) -> None:
        p = self._p
        self.invocations += 1
        request_id = str(event.get("requestId") or "")
        deadline_ms = int(event.get("deadlineMs") or self._wall_ms() + p.config.flush_budget_ms)
        p.logger.request_id = request_id
        p.state.current_request_id = request_id
        p.state.current_deadline_ms = deadline_ms
        p.relay.restore_spool()

        decision = decide(p.config.flush, last_flush_ms=self._last_flush_ms,
                          now_ms=self._wall_ms(), moment=Moment.INVOKE)
        flush_ms = 0.0
        if decision.wait_for_handler:
            remaining_s = (deadline_ms - _INVOKE_MARGIN_MS - self._wall_ms()) / 1000
            done = p.signals.wait(request_id, max(0.0, remaining_s))
            after = decide(p.config.flush, last_flush_ms=self._last_flush_ms,
                           now_ms=self._wall_ms(), moment=Moment.HANDLER_DONE)
            if after.flush:
                budget_ms = min(p.config.flush_budget_ms,
                                deadline_ms - _INVOKE_MARGIN_MS - self._wall_ms())
                result = p.relay.flush(max(0, budget_ms) / 1000)
                self._last_flush_ms = self._wall_ms()
                flush_ms = result.duration_ms
                if result.remaining:
                    p.logger.warning("flush.incomplete", remaining=result.remaining,
                                     budget_ms=budget_ms, handler_done=done)
        self._report(flush_ms)

    def _report(self, flush_ms: float, *, invocation: bool = True) -> None:
        """An ``invocation.done`` line (unless at SHUTDOWN) and an EMF line: the change since
        the last report."""
        p = self._p
        now = p.relay.counts()
        delta = {k: now[k] - self._reported[k] for k in now}
        self._reported = now
        depth, _ = p.relay.depth()
        if invocation:
            p.logger.info("invocation.done", accepted=delta["accepted"],
                          delivered=delta["delivered"], dead_lettered=delta["dead_lettered"],
                          spilled=delta["spilled"], spooled=delta["spooled"],
                          restored=delta["restored"], pending=depth, flush_ms=flush_ms)
        p.logger.write_raw(emf_line(
            {
                "RecordsAccepted": delta["accepted"],
                "RecordsDelivered": delta["delivered"],
                "RecordsDeadLettered": delta["dead_lettered"],
                "RecordsSpilled": delta["spilled"],
                "RecordsRejected": delta["rejected"],
                "FlushMs": flush_ms,
                "BufferDepth": depth,
            },
            function_name=p.config.function_name, timestamp_ms=self._wall_ms(),
        ))

    def shutdown(self, reason: str, deadline_ms: int) -> int:
        """Drain (the engine restores, flushes, spills within the deadline), summarise."""
        p = self._p
        drained = p.relay.drain(deadline_ms, reason=reason)
        p.stop_telemetry()
        p.server.stop()
        p.logger.request_id = None
        p.logger.info("shutdown.summary", invocations=self.invocations, **drained.as_log())
        self._report(drained.flush_ms, invocation=False)
        return 0
