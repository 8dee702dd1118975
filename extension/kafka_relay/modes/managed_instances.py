"""Lambda Managed Instances: many requests at once, no INVOKE, never frozen.

The handoff port is ``RequestAccounting`` around the engine (per-request reports by
request id); an end call or a Telemetry ``platform.report`` closes a request
(``AccountedSignals``); the SHUTDOWN-only background loop ticks the listener below.

The pump already produces records as they arrive and releases retries on its own
timer; what INVOKE drove on-demand runs here on the loop's ticker instead:
records parked in the /tmp spool are re-owned every few seconds, finished requests
get their ``invocation.done`` line (by request id, from ``RequestAccounting``), and
an EMF line carries the counts of the last period. SHUTDOWN is the on-demand drain
(``EngineListener.shutdown``), then the last requests' lines.

A Kafka error never ends the extension here: an extension exit replaces the whole
environment and fails every invocation in flight. If the pump itself dies, what it
held is spilled (as on-demand), new records get 503, and the extension keeps serving
until SHUTDOWN; the error is logged once as ``managed.pump_stopped``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from kafka_relay.config import Config, LambdaMode
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.handoff.server import DeliveryPort
from kafka_relay.handoff.signals import EndSignals
from kafka_relay.lifecycle.background_loop import BackgroundLoop
from kafka_relay.lifecycle.events import ShutdownEvent
from kafka_relay.lifecycle.listener import ShutdownSummary
from kafka_relay.lifecycle.loop import InvokeSource
from kafka_relay.modes.accounting import AccountedSignals, RequestAccounting
from kafka_relay.modes.engine_listener import EngineListener
from kafka_relay.modes.on_demand import OnDemand
from kafka_relay.observability.log import JsonLogger

SPOOL_EVERY_S = 5.0
METRICS_EVERY_S = 10.0


class ManagedInstances:
    """On-demand, wrapped: the port accounts per request, an end also closes the request,
    and the background loop replaces the INVOKE loop."""

    name: ClassVar[LambdaMode] = LambdaMode.MANAGED_INSTANCES
    defers_producer: ClassVar[bool] = False

    def __init__(self, config: Config, engine: DeliveryEngine, logger: JsonLogger) -> None:
        self._on_demand = OnDemand(config, engine, logger)
        self._engine = engine
        self._log = logger
        self.accounting = RequestAccounting(engine)
        self.port: DeliveryPort = self.accounting
        self.signals: EndSignals = AccountedSignals(self._on_demand.signals, self.accounting)
        self.ids = self._on_demand.ids
        self.listener = self._on_demand.listener

    def admit(self) -> str | None:
        return self._on_demand.admit()

    def restore(self, trigger: str) -> None:
        self._on_demand.restore(trigger)

    def loop(self, api: InvokeSource) -> BackgroundLoop:
        background = ManagedInstancesListener(self.listener, self._engine, self.accounting,
                                              self._log)
        return BackgroundLoop(background, self._log, api=api)

    def init_fields(self) -> dict[str, Any]:
        return self._on_demand.init_fields()


class ManagedInstancesListener:
    """The engine listener, wrapped for the background loop's ticks."""

    def __init__(self, engine_listener: EngineListener, engine: DeliveryEngine,
                 accounting: RequestAccounting, logger: JsonLogger, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine_listener = engine_listener
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
        failure = self._engine.gauge().failure
        if failure is not None and not self._pump_reported:
            self._pump_reported = True
            self._log.error("managed.pump_stopped", error=failure,
                            hint="records are refused (503) until Lambda replaces this "
                                 "environment; the extension keeps running because its exit "
                                 "would fail every invocation in flight")

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        summary = self._engine_listener.shutdown(event)
        self._report(self._accounting.due(final=True))
        return summary

    def _report(self, reports: list[dict[str, object]]) -> None:
        for fields in reports:
            self.requests += 1
            self._log.info("invocation.done", **fields)

    def _meter(self) -> None:
        """An EMF line for the last period, when anything happened in it. Through the
        on-demand listener, so the SHUTDOWN drain's line counts only what came after."""
        delta, gauge = self._engine_listener.take_delta()
        if any(delta[k] for k in ("accepted", "delivered", "dead_lettered", "spilled",
                                  "spooled", "restored", "rejected")):
            self._engine_listener.write_metrics(delta, gauge)
