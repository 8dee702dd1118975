"""SnapStart: nothing that restored copies must not share exists before the snapshot.

Lambda snapshots the environment after init and may restore any number of
copies from it. A broker connection or an idempotent producer id made at init
would be in every copy (shared sequence numbers: fencing, duplicate-sequence
errors), and so would the random x-relay-id prefix (duplicate ids across
copies). So in this mode init builds no producer, opens no broker connection
and draws no id prefix that is ever used; ``SnapStart.restore`` does all that
once, after the restore: on Telemetry ``platform.restoreStart`` (the only restore
signal an extension gets) or on the first INVOKE, whichever comes first.

Until then the handoff API refuses records (503): records handed over during the
function's init would be in the snapshot and sent by every copy. A request that
races the restore signal waits for it (``wait_s``) rather than being refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from kafka_relay.aws_lambda import INVOKE
from kafka_relay.config import Config, LambdaMode
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.handoff.server import DeliveryPort
from kafka_relay.handoff.signals import EndSignals, HandlerSignals
from kafka_relay.lifecycle.loop import EventLoop, InvokeSource
from kafka_relay.modes.engine_listener import EngineListener
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import IdSource

RESTORE_WAIT_S = 2.0  # for a restore signal that is on its way
BUILD_WAIT_S = 10.0  # for a restore under way (a Secrets Manager read, a token signer)
REFUSAL = ("SnapStart: kafka-relay accepts records once the snapshot is restored (in the "
           "handler), not during the function's init: records handed over before the snapshot "
           "would be sent again by every copy restored from it")


class SnapStart:
    name: ClassVar[LambdaMode] = LambdaMode.SNAP_START
    defers_producer: ClassVar[bool] = True

    def __init__(self, config: Config, engine: DeliveryEngine, logger: JsonLogger, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._engine = engine
        self._log = logger
        self.restore_wait_s = RESTORE_WAIT_S
        self._monotonic = monotonic
        self._probe_s = config.init_probe_ms / 1000
        self._lock = threading.Lock()
        self._restored = threading.Event()
        self._restoring = False
        handler_signals = HandlerSignals()
        self.port: DeliveryPort = engine
        self.signals: EndSignals = handler_signals
        # The init prefix is never used (nothing is admitted before the restore): it is
        # drawn only to be logged, so the restored one can be told apart.
        self.ids = IdSource()
        self.init_id_prefix = self.ids.prefix
        self.listener = EngineListener(config=config, engine=engine, signals=handler_signals,
                                       logger=logger)

    def restore(self, trigger: str) -> None:
        """Build what must be unique per copy (once; a second signal is a no-op). Never
        raises: a failure is logged and records stay refused."""
        if self._restored.is_set():
            return
        with self._lock:
            if self._restored.is_set():
                return
            self._restoring = True
            started = self._monotonic()
            try:
                prefix = self.ids.reseed()
                self._engine.start()
            except Exception as exc:
                self._restoring = False
                self._log.error("snapstart.restore_failed", trigger=trigger, error=repr(exc))
                return
            self._restored.set()
        self._log.info("snapstart.restored", trigger=trigger,
                       duration_ms=round((self._monotonic() - started) * 1000, 3),
                       id_prefix=prefix, init_id_prefix=self.init_id_prefix)
        if self._probe_s > 0:  # the broker connection on-demand opens at init, opened now
            threading.Thread(target=self._probe, name="kafka-relay-probe", daemon=True).start()

    def _probe(self) -> None:
        error = self._engine.probe(self._probe_s)
        if error is not None:
            self._log.warning("snapstart.broker_unreachable", error=error)

    def admit(self) -> str | None:
        """None once restored (waiting a little for a restore signal that is on its way,
        longer for a restore under way), else the refusal."""
        if self._restored.wait(self.restore_wait_s):
            return None
        if self._restoring and self._restored.wait(BUILD_WAIT_S):
            return None
        return REFUSAL

    def loop(self, api: InvokeSource) -> EventLoop:
        return EventLoop(self.listener, self._config, self._log,
                         api=RestoreOnInvoke(api, self.restore))

    def init_fields(self) -> dict[str, Any]:
        return {"init_id_prefix": self.init_id_prefix}


class RestoreOnInvoke:
    """The Extensions API, restoring on the first INVOKE if Telemetry did not already: the
    loop sees the INVOKE only once the producer exists."""

    def __init__(self, api: InvokeSource, restore: Callable[[str], None]) -> None:
        self._api = api
        self._restore = restore

    def next_event(self) -> dict[str, Any]:
        event = self._api.next_event()
        if event.get("eventType") == INVOKE:
            self._restore("invoke")
        return event

    def request_next(self) -> None:
        self._api.request_next()

    def exit_error(self, error_type: str, message: str) -> None:
        self._api.exit_error(error_type, message)
