"""How an environment whose Kafka credentials the broker refuses fails in the sandbox."""

from __future__ import annotations

from typing import NamedTuple

from devtools.sandbox import Sandbox, SandboxInitError
from kafka_relay.tools.table import events_named


class Refusal(NamedTuple):
    phase: str  # "init": an init error; "invoke": the first invocation failed, then a reset
    error_type: str
    message: str


def refusal(sandbox: Sandbox) -> Refusal:
    """Start ``sandbox`` and invoke it once. The extension probes the broker before its first
    /next (an init error) or, on demand, after it: the first invocation then fails with the
    extension's exit error and the environment is reset (or, when the probe failed before
    the runtime finished its own init, init still fails)."""
    try:
        sandbox.start()
    except SandboxInitError as exc:
        return Refusal("init", exc.error_type, exc.message)
    result = sandbox.invoke({"run": "refused", "count": 1})
    assert result.reset is not None, result
    assert result.error is not None, result
    (line,) = events_named(sandbox.log_lines(), "init.error")
    assert line["after_ready"] is True
    assert line["error"] in str(result.error["errorMessage"]), result.error
    return Refusal("invoke", str(result.error["errorType"]), str(line["error"]))
