"""What the Lambda APIs and the sandbox's control thread share about one execution environment.

Every field is read and written under the sandbox's one ``threading.Condition``
(``EnvState.cond``): the API server's handler threads change it and notify,
the control thread (``Sandbox.invoke`` and friends) waits on it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from devtools.sandbox.telemetry import TelemetryHub


@dataclass(frozen=True)
class ErrorReport:
    """An ``init/error`` or ``exit/error`` call: who, Lambda's error type, the message."""

    source: str
    error_type: str
    message: str


@dataclass
class Invocation:
    request_id: str
    event: bytes
    deadline_ms: int
    trace_id: str
    function_arn: str
    started: float  # monotonic seconds
    started_wall_ms: int
    taken: bool = False  # the runtime received it from /next
    responded: float | None = None  # monotonic seconds of the response or error post
    response: bytes = b""
    content_type: str = "application/json"
    error: dict[str, Any] | None = None
    error_type: str | None = None


@dataclass
class ExtensionState:
    name: str
    identifier: str
    events: frozenset[str]
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    waiting: bool = False  # blocked in /event/next right now
    next_calls: int = 0
    last_request_id: str | None = None  # of the last INVOKE it received
    got_shutdown: bool = False


@dataclass
class EnvState:
    generation: int
    cond: threading.Condition
    hub: TelemetryHub
    function_name: str
    handler: str
    init_type: str = "on-demand"  # AWS_LAMBDA_INITIALIZATION_TYPE of this environment
    phase: str = "init"  # init | ready | invoke | shutdown | closed
    extensions: dict[str, ExtensionState] = field(default_factory=dict)  # by identifier
    runtime_waiting: bool = False
    runtime_next_calls: int = 0
    last_next_at: float = 0.0  # monotonic seconds of the latest /next from anyone
    for_runtime: Invocation | None = None  # handed out at the runtime's next /next
    current: Invocation | None = None
    # Managed instances: invocations waiting for any runtime worker's /next, and those
    # handed out and not yet answered, by request id.
    pending: deque[Invocation] = field(default_factory=deque)
    inflight: dict[str, Invocation] = field(default_factory=dict)
    # SnapStart: the runtime blocks in /restore/next from the snapshot until the restore.
    restore_waiting: bool = False
    restore_released: bool = False
    restore_error: ErrorReport | None = None
    # SnapStart: the container credentials endpoint's token and its answer.
    credentials_token: str | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    init_error: ErrorReport | None = None
    exit_error: ErrorReport | None = None
    subscriptions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def managed_instances(self) -> bool:
        return self.init_type == "lambda-managed-instances"

    @property
    def closed(self) -> bool:
        return self.phase == "closed"

    def extension_by_name(self, name: str) -> ExtensionState | None:
        return next((e for e in self.extensions.values() if e.name == name), None)
