"""On-demand (and provisioned concurrency): one INVOKE at a time, frozen in between.

The engine is the handoff port; the INVOKE event loop drives the engine listener. The
producer is built at init. Should the environment be restored from a snapshot after all
(SnapStart that the environment did not reveal: Telemetry ``platform.restoreStart``),
``restore`` makes anew what the copies would otherwise share.
"""

from __future__ import annotations

from typing import Any, ClassVar

from kafka_relay.config import Config, LambdaMode
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.handoff.server import DeliveryPort
from kafka_relay.handoff.signals import EndSignals, HandlerSignals
from kafka_relay.lifecycle.loop import EventLoop, InvokeSource
from kafka_relay.modes.engine_listener import EngineListener
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import IdSource


class OnDemand:
    name: ClassVar[LambdaMode] = LambdaMode.ON_DEMAND
    defers_producer: ClassVar[bool] = False

    def __init__(self, config: Config, engine: DeliveryEngine, logger: JsonLogger) -> None:
        self._config = config
        self._engine = engine
        self._log = logger
        handler_signals = HandlerSignals()
        self.port: DeliveryPort = engine
        self.signals: EndSignals = handler_signals
        self.ids = IdSource()
        self.listener = EngineListener(config=config, engine=engine, signals=handler_signals,
                                       logger=logger)

    def admit(self) -> str | None:
        return None

    def restore(self, trigger: str) -> None:
        """A restore although the producer was built before the snapshot (SnapStart not
        detected): a fresh id prefix, and a new producer (a new idempotent producer id)
        before the next batch. Records accepted before the snapshot are in every copy;
        nothing can undo that."""
        previous = self.ids.prefix
        prefix = self.ids.reseed()
        self._engine.thawed(restored=True)
        self._log.warning("restore.reseeded", trigger=trigger, id_prefix=prefix,
                          previous_id_prefix=previous,
                          hint="restored from a snapshot although SnapStart was not detected "
                               "at init: records handed over before the snapshot may be sent "
                               "by every copy")

    def loop(self, api: InvokeSource) -> EventLoop:
        return EventLoop(self.listener, self._config, self._log, api=api)

    def init_fields(self) -> dict[str, Any]:
        return {}
