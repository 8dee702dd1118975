"""SnapStart: nothing that restored copies must not share exists before the snapshot.

Lambda snapshots the environment after init and may restore any number of
copies from it. A broker connection or an idempotent producer id made at init
would be in every copy (shared sequence numbers: fencing, duplicate-sequence
errors), and so would the random x-relay-id prefix (duplicate ids across
copies). So in this mode init builds no producer, opens no broker connection
and draws no id prefix that is ever used; ``SnapStartGate.restore`` does all
that once, after the restore: on Telemetry ``platform.restoreStart`` (the only
restore signal an extension gets) or on the first INVOKE, whichever comes first.

Until then the handoff API refuses records (503): records handed over during the
function's init would be in the snapshot and sent by every copy. A request that
races the restore signal waits for it (``wait_s``) rather than being refused.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.delivery.probe import probe_broker
from kafka_relay.lifecycle.events import InvokeEvent
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import IdSource
from kafka_relay.relay_listener import RelayListener

RESTORE_WAIT_S = 2.0  # for a restore signal that is on its way
BUILD_WAIT_S = 10.0  # for a restore under way (a Secrets Manager read, a token signer)
REFUSAL = ("SnapStart: kafka-relay accepts records once the snapshot is restored (in the "
           "handler), not during the function's init: records handed over before the snapshot "
           "would be sent again by every copy restored from it")


def new_ids() -> tuple[IdSource, str]:
    """An id source and its random prefix (drawn now: call it after the restore)."""
    prefix = os.urandom(6).hex()
    return IdSource(prefix), prefix


class SnapStartGate:
    def __init__(self, engine: DeliveryEngine, logger: JsonLogger, *,
                 wait_s: float = RESTORE_WAIT_S, probe_s: float = 0.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._probe_s = probe_s
        self._log = logger
        self._wait_s = wait_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._restored = threading.Event()
        self._restoring = False
        # Run once at the restore, before records are admitted; each returns log fields.
        self.hooks: list[Callable[[], dict[str, Any]]] = []
        self.trigger: str | None = None

    @property
    def restored(self) -> bool:
        return self._restored.is_set()

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
            fields: dict[str, Any] = {}
            try:
                for hook in self.hooks:
                    fields.update(hook())
                self._engine.start_producer()
            except Exception as exc:
                self._restoring = False
                self._log.error("snapstart.restore_failed", trigger=trigger, error=repr(exc))
                return
            self.trigger = trigger
            self._restored.set()
        self._log.info("snapstart.restored", trigger=trigger,
                       duration_ms=round((self._monotonic() - started) * 1000, 3), **fields)
        if self._probe_s > 0:  # the broker connection on-demand opens at init, opened now
            threading.Thread(target=self._probe, name="kafka-relay-probe", daemon=True).start()

    def _probe(self) -> None:
        error = probe_broker(self._engine.pump, self._probe_s)
        if error is not None:
            self._log.warning("snapstart.broker_unreachable", error=error)

    def admit(self) -> str | None:
        """The handoff server's admission check: None once restored (waiting a little for
        a restore signal that is on its way, longer for a restore under way), else the
        refusal."""
        if self._restored.wait(self._wait_s):
            return None
        if self._restoring and self._restored.wait(BUILD_WAIT_S):
            return None
        return REFUSAL


class RestoringListener(RelayListener):
    """The on-demand listener, restoring on the first INVOKE if Telemetry did not already."""

    def __init__(self, *, gate: SnapStartGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = gate

    def on_invoke(self, event: InvokeEvent) -> None:
        self._gate.restore("invoke")
        super().on_invoke(event)
