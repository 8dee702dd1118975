"""What differs between Lambda modes in the assembled extension (app.py asks this module).

on-demand          the engine is the handoff port; the INVOKE event loop.
managed-instances  the port is ``RequestAccounting`` (per-request reports by request id),
                   handler-done signals close requests, the SHUTDOWN-only background loop.
                   Chosen when Lambda accepted no INVOKE registration, whatever the variable.
snap-start         the producer is deferred past the snapshot; a gate admits records and
                   draws a fresh x-relay-id prefix only after the restore (snapstart.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka_relay.config import Config, LambdaMode
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.handoff.server import DeliveryPort, HandoffState
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.loop import EventSource
from kafka_relay.lifecycle.managed import BackgroundLoop
from kafka_relay.modes.accounting import AccountedSignals, RequestAccounting
from kafka_relay.modes.managed import ManagedListener
from kafka_relay.modes.snapstart import RestoringListener, SnapStartGate, new_ids
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import IdSource
from kafka_relay.relay_listener import RelayListener


@dataclass
class ModeParts:
    mode: LambdaMode
    port: DeliveryPort
    signals: HandlerSignals
    ids: IdSource
    accounting: RequestAccounting | None = None
    gate: SnapStartGate | None = None
    init_id_prefix: str | None = None  # SnapStart: the (never used) prefix drawn at init

    @classmethod
    def create(cls, config: Config, engine: DeliveryEngine, logger: JsonLogger, *,
               background: bool) -> ModeParts:
        """``background``: Lambda sends no INVOKE (managed instances, or it refused one)."""
        if background:
            accounting = RequestAccounting(engine)
            return cls(LambdaMode.MANAGED_INSTANCES, accounting, AccountedSignals(accounting),
                       IdSource(), accounting=accounting)
        if config.mode is LambdaMode.SNAP_START:
            # The init prefix is never used (nothing is admitted before the restore): it is
            # drawn only to be logged, so the restored one can be told apart.
            ids, prefix = new_ids()
            return cls(config.mode, engine, HandlerSignals(), ids,
                       gate=SnapStartGate(engine, logger, probe_s=config.init_probe_ms / 1000),
                       init_id_prefix=prefix)
        return cls(config.mode, engine, HandlerSignals(), IdSource())

    @property
    def defers_producer(self) -> bool:
        return self.gate is not None

    def admit(self) -> Callable[[], str | None]:
        return self.gate.admit if self.gate is not None else lambda: None

    def wire(self, state: HandoffState) -> None:
        """SnapStart: the restore replaces the handoff's id source (ids drawn before admit)."""
        if self.gate is None:
            return
        def reseed() -> dict[str, Any]:
            state.ids, prefix = new_ids()
            return {"id_prefix": prefix, "init_id_prefix": self.init_id_prefix}

        self.gate.hooks.append(reseed)

    def relay_listener(self, **kwargs: Any) -> RelayListener:
        if self.gate is not None:
            return RestoringListener(gate=self.gate, **kwargs)
        return RelayListener(**kwargs)

    def on_restore(self) -> Callable[[], None] | None:
        """Telemetry's restoreStart: restore off the Telemetry request's thread (building the
        producer may read a secret); the first INVOKE waits for it on the gate's lock."""
        gate = self.gate
        if gate is None:
            return None
        return lambda: threading.Thread(target=gate.restore, args=("telemetry",),
                                        name="kafka-relay-restore", daemon=True).start()

    def background_loop(self, listener: RelayListener, engine: DeliveryEngine,
                        logger: JsonLogger, api: EventSource) -> BackgroundLoop | None:
        if self.accounting is None:
            return None
        managed = ManagedListener(listener, engine, self.accounting, logger)
        return BackgroundLoop(managed, logger, api=api)
