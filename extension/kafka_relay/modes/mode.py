"""The Lambda mode, decided once, and the one protocol the three modes implement.

``decide`` is the only place that chooses: the registration's answer first (no INVOKE:
managed instances, whatever the environment said), then what the environment suggests
(``config.mode_hint``: snap-start, or on-demand). ``MODES`` maps the choice to its class:

on-demand          on_demand.py          the engine is the handoff port; the INVOKE loop.
snap-start         snap_start.py         no producer and no id prefix before the restore.
managed-instances  managed_instances.py  per-request accounting; the SHUTDOWN-only loop.

A mode adds behaviour by wrapping (the engine in ``RequestAccounting``, the signals in
``AccountedSignals``, the listener in ``ManagedInstancesListener``, the Extensions API in
``RestoreOnInvoke``), never by subclassing or hooks.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar, Protocol

from kafka_relay.aws_lambda import INVOKE
from kafka_relay.config import Config, LambdaMode
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.handoff.server import DeliveryPort
from kafka_relay.handoff.signals import EndSignals
from kafka_relay.lifecycle.loop import InvokeSource
from kafka_relay.modes.engine_listener import EngineListener
from kafka_relay.modes.managed_instances import ManagedInstances
from kafka_relay.modes.on_demand import OnDemand
from kafka_relay.modes.snap_start import SnapStart
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import IdSource


class Loop(Protocol):
    def run(self) -> int:
        """Serve events until SHUTDOWN; the process exit code."""


class Mode(Protocol):
    name: ClassVar[LambdaMode]
    defers_producer: ClassVar[bool]  # the engine builds no producer until ``restore``
    port: DeliveryPort  # what the handoff server delivers through
    signals: EndSignals  # where the handoff's end route and Telemetry end a request
    ids: IdSource  # the handoff's record ids (reseeded in place by a restore)
    listener: EngineListener  # the lifecycle's listener on the engine

    def __init__(self, config: Config, engine: DeliveryEngine, logger: JsonLogger) -> None: ...

    def admit(self) -> str | None:
        """The handoff's admission check: None admits, a text refuses records (503)."""

    def restore(self, trigger: str) -> None:
        """The environment was restored from a snapshot (Telemetry ``platform.restoreStart``,
        or SnapStart's first INVOKE): what every copy would share is made anew. Never raises."""

    def loop(self, api: InvokeSource) -> Loop:
        """The event loop this mode runs."""

    def init_fields(self) -> dict[str, Any]:
        """Extra fields of the ``init.ready`` line."""


def decide(events: Collection[str], config: Config) -> LambdaMode:
    """The mode, from what Lambda accepted the registration for and the configuration."""
    if INVOKE not in events:
        return LambdaMode.MANAGED_INSTANCES
    if config.mode_hint is LambdaMode.SNAP_START:
        return LambdaMode.SNAP_START
    return LambdaMode.ON_DEMAND


MODES: dict[LambdaMode, type[Mode]] = {LambdaMode.ON_DEMAND: OnDemand,
                                       LambdaMode.SNAP_START: SnapStart,
                                       LambdaMode.MANAGED_INSTANCES: ManagedInstances}


def mode_for(events: Collection[str], config: Config) -> type[Mode]:
    """The class of the mode ``decide`` chooses (the engine asks it whether to defer)."""
    return MODES[decide(events, config)]
