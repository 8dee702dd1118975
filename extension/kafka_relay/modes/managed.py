"""The background listener for Lambda Managed Instances: no INVOKE, so no per-invocation work.

The pump already produces records as they arrive and releases retries on its own
timer; what INVOKE drove on-demand runs here on the loop's ticker instead:
records parked in the /tmp spool are re-owned every few seconds, finished requests
get their ``invocation.done`` line (by request id, from ``RequestAccounting``), and
an EMF line carries the counts of the last period. SHUTDOWN is the on-demand drain
(``RelayListener.shutdown``), then the last requests' lines.

A Kafka error never ends the extension here: an extension exit replaces the whole
environment and fails every invocation in flight. If the pump itself dies, what it
held is spilled (as on-demand), new records get 503, and the extension keeps serving
until SHUTDOWN; the error is logged once as ``managed.pump_stopped``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.lifecycle.events import ShutdownEvent
from kafka_relay.lifecycle.listener import ShutdownSummary
from kafka_relay.modes.accounting import RequestAccounting
from kafka_relay.observability.log import JsonLogger
from kafka_relay.relay_listener import RelayListener

SPOOL_EVERY_S = 5.0
METRICS_EVERY_S = 10.0


class ManagedListener:
    def __init__(self, relay_listener: RelayListener, engine: DeliveryEngine,
                 accounting: RequestAccounting, logger: JsonLogger, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._relay_listener = relay_listener
        self._engine = engine
        self._accounting = accounting
        self._log = logger
        self._monotonic = monotonic
        self._next_spool = self._next_metrics = monotonic()
        self._pump_reported = False
        self.requests = 0

    def tick(self) -> None:
        """Called by the loop's ticker, a few times a second."""
        now = self._monotonic()
        if now >= self._next_spool:
            self._next_spool = now + SPOOL_EVERY_S
            self._engine.restore_spool()  # logs spool.restored itself
        self._report(self._accounting.due())
        if now >= self._next_metrics:
            self._next_metrics = now + METRICS_EVERY_S
            self._meter()
        if not self._engine.healthy and not self._pump_reported:
            self._pump_reported = True
            self._log.error("managed.pump_stopped", error=self._engine.failure,
                            hint="records are refused (503) until Lambda replaces this "
                                 "environment; the extension keeps running because its exit "
                                 "would fail every invocation in flight")

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        summary = self._relay_listener.shutdown(event)
        self._report(self._accounting.due(final=True))
        return summary

    def _report(self, reports: list[dict[str, object]]) -> None:
        for fields in reports:
            self.requests += 1
            self._log.info("invocation.done", **fields)

    def _meter(self) -> None:
        """An EMF line for the last period, when anything happened in it. Through the
        on-demand listener, so the SHUTDOWN drain's line counts only what came after."""
        delta = self._relay_listener.take_delta()
        if any(delta[k] for k in ("accepted", "delivered", "dead_lettered", "spilled",
                                  "spooled", "restored", "rejected")):
            self._relay_listener.write_metrics(delta, depth=self._engine.depth()[0])
