"""Lambda Managed Instances: many invocations at once in one environment.

Telemetry per request is what AWS's Managed Instances platform sends (its open-source
emulator, internal/lambda-managed-instances: ``SendInvokeStart``/``SendReport``):
``platform.start`` when it is handed out and ``platform.report`` (requestId, status
success|error|failure|timeout, metrics.durationMs, errorType) when it is over; never an
invoke ``platform.runtimeDone``.

The runtime (awslambdaric, which forks one worker per its
``AWS_LAMBDA_MAX_CONCURRENCY``) polls ``/runtime/invocation/next`` from every
worker; up to ``concurrency`` invocations are handed out at once, the rest wait
their turn. Nothing freezes; extensions get no INVOKE (they may register for
SHUTDOWN only). An invocation that outlives the function timeout is reported
as timed out, but nothing is killed (Lambda does not reset the environment for
it). An extension or runtime process that exits ends the environment: its
in-flight invocations fail, and the rest run in a fresh one.
"""

from __future__ import annotations

import functools
import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from devtools.sandbox import sandbox as sandbox_module  # circular: used at call time only
from devtools.sandbox.apiserver import tracing
from devtools.sandbox.state import Invocation
from devtools.sandbox.telemetry import iso_time

if TYPE_CHECKING:
    from devtools.sandbox.sandbox import InvokeResult, Sandbox, ShutdownResult, _Live


def invoke_many(sb: Sandbox, events: Sequence[Any], *, concurrency: int) -> list[InvokeResult]:
    """Run ``events`` with at most ``concurrency`` in flight; results in event order."""
    results: list[InvokeResult | None] = [None] * len(events)
    active: dict[int, Invocation] = {}
    queued = list(range(len(events)))
    while queued or active:
        live = sb._live if sb._live is not None else _fresh(sb)
        while queued and len(active) < concurrency:
            index = queued.pop(0)
            active[index] = _dispatch(sb, live, events[index])
        deadline = min(inv.started for inv in active.values()) + sb.timeout_s
        outcome = sb._wait_until(functools.partial(_changed, sb, live, active), deadline)
        if isinstance(outcome, str):  # a process exited: the environment is replaced
            failure = outcome
            reset = sb._teardown("failure")
            for index, inv in active.items():
                results[index] = _report(sb, live, inv, failure=failure, reset=reset)
            active.clear()
            continue
        now = time.monotonic()
        for index, inv in list(active.items()):
            if inv.responded is not None or now >= inv.started + sb.timeout_s:
                results[index] = _report(sb, live, inv)
                del active[index]
    return [r for r in results if r is not None]


def _fresh(sb: Sandbox) -> _Live:
    sb._init()
    assert sb._live is not None
    return sb._live


def _dispatch(sb: Sandbox, live: _Live, event: Any) -> Invocation:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    now_ms = int(time.time() * 1000)
    inv = Invocation(
        request_id=str(uuid.uuid4()), event=body,
        deadline_ms=now_ms + round(sb.timeout_s * 1000), trace_id=sandbox_module._trace_id(),
        function_arn=sb._function_arn, started=time.monotonic(), started_wall_ms=now_ms)
    sb._log(f"START RequestId: {inv.request_id} Version: $LATEST")
    live.hub.emit("platform", "platform.start", {
        "requestId": inv.request_id, "version": "$LATEST", "tracing": tracing(inv)})
    with sb._cond:
        live.state.phase = "invoke"
        live.state.inflight[inv.request_id] = inv
        live.state.pending.append(inv)
        sb._cond.notify_all()
    return inv


def _changed(sb: Sandbox, live: _Live, active: dict[int, Invocation]) -> str | bool | None:
    """Called under the condition: a failure type when a process exited, True when an
    active invocation answered or ran out of time, None while nothing changed."""
    for proc in live.procs.all:
        if proc.exit_code is not None:
            return "Extension.Crash" if proc.kind == "extension" else "Runtime.ExitError"
    if live.state.exit_error is not None:
        return live.state.exit_error.error_type
    now = time.monotonic()
    if any(i.responded is not None or now >= i.started + sb.timeout_s for i in active.values()):
        return True
    return None


def _report(sb: Sandbox, live: _Live, inv: Invocation, *, failure: str | None = None,
            reset: ShutdownResult | None = None) -> InvokeResult:
    """Log END/REPORT for one invocation and build its result."""
    with sb._cond:
        live.state.inflight.pop(inv.request_id, None)
        responded = inv.responded
        if not live.state.inflight:
            live.state.phase = "ready"
    request_id = inv.request_id
    ended = responded if responded is not None else time.monotonic()
    duration_ms = (ended - inv.started) * 1000
    billed_ms = math.ceil(duration_ms)
    error, payload = inv.error, inv.response
    status: sandbox_module.Status = "success" if error is None else "error"
    extra: list[str] = []
    if responded is None:
        if failure is None:
            status = "timeout"
            message = (f"{iso_time(time.time())} {request_id} Task timed out after "
                       f"{sb.timeout_s:.2f} seconds")
            sb._log(message)
            error = {"errorType": "Sandbox.Timedout", "errorMessage": message}
            extra = ["Status: timeout"]
        else:
            status = "error"
            error = {"errorType": failure, "errorMessage": f"RequestId: {request_id} Error: "
                                                           "the execution environment ended"}
            extra = ["Status: error", f"Error Type: {failure}"]
        payload = json.dumps(error).encode()
    max_memory_mb = live.procs.max_memory_mb() if reset is None else 0
    init_ms = live.init_ms if live.report_init else None
    live.report_init = False
    fields = [f"Duration: {duration_ms:.2f} ms", f"Billed Duration: {billed_ms} ms",
              f"Memory Size: {sb.memory_mb} MB", f"Max Memory Used: {max_memory_mb} MB"]
    if init_ms is not None:
        fields.append(f"Init Duration: {init_ms:.2f} ms")
    sb._log(f"END RequestId: {request_id}")
    sb._log(f"REPORT RequestId: {request_id}\t" + "\t".join(fields + extra))
    report: dict[str, Any] = {
        "requestId": request_id,
        "status": {"success": "success", "error": "error" if failure is None else "failure",
                   "timeout": "timeout"}[status],
        "metrics": {"durationMs": round(duration_ms, 3)},
        "tracing": tracing(inv)}
    if error is not None:
        report["errorType"] = error["errorType"]
    live.hub.emit("platform", "platform.report", report)
    return sandbox_module.InvokeResult(
        request_id=request_id, status=status, payload=sandbox_module._parse(payload),
        raw_payload=payload, error=error, caller_ms=duration_ms,
        runtime_ms=duration_ms, post_runtime_ms=0.0, duration_ms=duration_ms,
        billed_ms=billed_ms, init_ms=init_ms, max_memory_mb=max_memory_mb,
        started_ms=inv.started_wall_ms, deadline_ms=inv.deadline_ms, reset=reset)
