"""``Sandbox``: one Lambda function's execution environment, run locally, driven by its caller."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO, TypeVar

from devtools.sandbox import concurrent, modes
from devtools.sandbox.apiserver import LambdaApiServer, tracing
from devtools.sandbox.cgroup import CpuTimes, EnvironmentCgroup, vcpus_for_memory, warn_once
from devtools.sandbox.environment import (
    Layout,
    Proc,
    Processes,
    extension_environment,
    lambda_environment,
)
from devtools.sandbox.errors import SandboxError, SandboxInitError
from devtools.sandbox.logstream import LogStream
from devtools.sandbox.modes import ModeConfig, RestoreResult, SnapshotReport
from devtools.sandbox.state import EnvState, Invocation
from devtools.sandbox.telemetry import TelemetryHub, iso_time

_T = TypeVar("_T")
_ACCOUNT_ID = "123456789012"
# Output written before a /next call reaches the stream within this, or END goes first.
_SETTLE_S = 0.2
# Lambda's SHUTDOWN phase gives the runtime its first 300 ms (500 ms with an internal
# extension); external extensions get SHUTDOWN after that, with the phase's deadline.
RUNTIME_SHUTDOWN_MS = 300

Status = Literal["success", "error", "timeout"]


@dataclass(frozen=True)
class ShutdownResult:
    """How an environment ended. ``killed`` names the processes SIGKILLed at the deadline."""

    reason: str  # spindown | timeout | failure
    deadline_ms: int  # the SHUTDOWN event's deadlineMs (epoch ms)
    duration_ms: float
    exit_codes: dict[str, int | None]  # extension file name -> exit code (-9: SIGKILL)
    killed: list[str]
    notified: list[str]  # extensions that received the SHUTDOWN event


@dataclass(frozen=True)
class InvokeResult:
    """One invocation, with the timings Lambda reports and bills.

    ``caller_ms``/``runtime_ms``: invoke start -> the runtime posted its response
    (what the caller waits). ``post_runtime_ms``: response -> the runtime and every
    extension called ``/next``. ``duration_ms`` = both (the REPORT line's
    Duration: Lambda's invoke phase ends when everyone called ``/next``);
    ``billed_ms`` = ceil(duration_ms). ``init_ms`` only on the first invoke
    after an init. ``reset`` is set when this invoke ended the environment.
    """

    request_id: str
    status: Status
    payload: Any  # the response (or error document) parsed as JSON, else the raw text
    raw_payload: bytes
    error: dict[str, Any] | None
    caller_ms: float
    runtime_ms: float
    post_runtime_ms: float
    duration_ms: float
    billed_ms: int
    init_ms: float | None
    max_memory_mb: int
    started_ms: int  # epoch ms when the invoke started
    deadline_ms: int  # epoch ms, the deadline the runtime and extensions were given
    reset: ShutdownResult | None = None
    # CPU (user + sys) the environment's processes used since the previous invoke ended
    cpu_runtime_ms: float = 0.0
    cpu_extensions_ms: float = 0.0
    cpu_quota_vcpus: float | None = None  # None: the environment ran without a quota

    @property
    def cpu_ms(self) -> float:
        return self.cpu_runtime_ms + self.cpu_extensions_ms


@dataclass
class _Live:
    """The running environment: its shared state, processes and telemetry."""

    state: EnvState
    procs: Processes
    hub: TelemetryHub
    init_ms: float = 0.0
    report_init: bool = True  # the next REPORT carries Init Duration
    cpu_mark: CpuTimes = field(default_factory=CpuTimes)  # CPU used up to the end of the last phase
    init_cpu: CpuTimes = field(default_factory=CpuTimes)  # CPU the init phase used
    snapshot: SnapshotReport | None = None  # SnapStart: taken at the end of init
    restored: RestoreResult | None = None


class Sandbox:
    """A local Lambda execution environment; see the package docstring for the contract."""

    def __init__(
        self,
        *,
        function: Path,
        handler: str,
        layers: Iterable[Path] = (),
        env: Mapping[str, str] | None = None,
        function_name: str = "kafka-relay-sandbox",
        memory_mb: int | None = None,
        cpu_quota: bool | float | None = None,
        timeout_s: float = 30.0,
        init_timeout_s: float = 10.0,
        shutdown_budget_ms: int = 2000,
        log_path: Path | None = None,
        python: str = sys.executable,
        region: str = "us-east-1",
        isolated: bool = True,
        echo: TextIO | None = None,
        keep_dir: bool = False,
        mode: str = "on-demand",
        max_concurrency: int | None = None,
        runtime_processes: int | None = None,
        hide_init_type: bool = False,
    ) -> None:
        self._layers = [Path(p) for p in layers]
        self._function = Path(function)
        for path in (*self._layers, self._function):
            if not path.exists():
                raise SandboxError(f"{path} does not exist: build it first (./build.sh build) "
                                   "or pass a directory laid out like the zip")
        if not handler or "." not in handler:
            raise SandboxError(f"handler must look like 'module.function', got {handler!r}")
        if timeout_s <= 0 or init_timeout_s <= 0 or shutdown_budget_ms < 0:
            raise SandboxError("timeout_s and init_timeout_s must be > 0, shutdown_budget_ms >= 0")
        self.mode = ModeConfig.create(mode, max_concurrency=max_concurrency,
                                      runtime_processes=runtime_processes,
                                      hide_init_type=hide_init_type)
        self.handler = handler
        self.function_name = function_name
        self.memory_mb = 256 if memory_mb is None else memory_mb
        self.cpu_vcpus = resolve_cpu_quota(memory_mb, cpu_quota)
        self.timeout_s = timeout_s
        self.init_timeout_s = init_timeout_s
        self.shutdown_budget_ms = shutdown_budget_ms
        self.region = region
        self._function_env = dict(env or {})
        self._log_path = log_path
        self._python = python
        self._isolated = isolated
        self._echo = echo
        self._keep_dir = keep_dir
        self._cond = threading.Condition()
        # One control call at a time, as Lambda runs one invoke per environment at a time.
        self._control = threading.RLock()
        self._root: Path | None = None
        self._layout: Layout | None = None
        self._stream: LogStream | None = None
        self._server: LambdaApiServer | None = None
        self._live: _Live | None = None
        self._generation = 0
        self._tmp_dir: Path | None = None
        self._reset_tmp = False  # the last environment was reset: its /tmp carries over
        self._subscriptions: list[dict[str, Any]] = []

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> Sandbox:
        """Unpack the layers and the function, start the Lambda APIs (idempotent)."""
        if self._root is not None:
            return self
        self._root = Path(tempfile.mkdtemp(prefix="lambda-sandbox-"))
        try:
            self._stream = LogStream(self._log_path or self._root / "log-stream.log",
                                     echo=self._echo)
            self._layout = Layout.prepare(self._root, layers=self._layers,
                                          function=self._function, python=self._python,
                                          isolated=self._isolated)
            self._server = LambdaApiServer(log=self._stream.write)
            self._server.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Spin down a running environment, stop the APIs, remove the temp dir."""
        with self._control:
            self._close()

    def _close(self) -> None:
        try:
            if self._live is not None:
                self.shutdown("spindown")
        finally:
            if self._live is not None:  # shutdown itself failed: never leave processes
                self._live.procs.close()
                self._live = None
            if self._server is not None:
                self._server.stop()
                self._server = None
            if self._stream is not None:
                self._stream.close()
            if self._root is not None and not self._keep_dir:
                shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what tests and tools read --------------------------------------------------------

    @property
    def runtime_api(self) -> str:
        """``127.0.0.1:PORT``, the environment's ``AWS_LAMBDA_RUNTIME_API``."""
        return self._opened()[1].address

    @property
    def opt_dir(self) -> Path:
        """The merged layers (Lambda's ``/opt``)."""
        return self._opened()[0].opt

    @property
    def task_root(self) -> Path:
        """The function's code (Lambda's ``/var/task``)."""
        return self._opened()[0].task

    @property
    def log_path(self) -> Path:
        assert self._stream is not None, "open() the sandbox first"
        return self._stream.path

    @property
    def init_cpu(self) -> CpuTimes:
        """CPU (user + sys) the running environment's init phase used (a fresh cgroup's)."""
        assert self._live is not None, "start() the environment first"
        return self._live.init_cpu

    def log_lines(self) -> list[str]:
        return self._stream.lines() if self._stream is not None else []

    def wait_for_log(self, pattern: str, *, timeout: float = 5.0, start: int = 0) -> str:
        """The first log line (from index ``start``) matching the regex ``pattern``."""
        assert self._stream is not None, "open() the sandbox first"
        return self._stream.wait_for(pattern, timeout=timeout, start=start)

    def pids(self) -> list[int]:
        """Live pids of the running environment (extensions, runtime and their forks)."""
        return self._live.procs.pids() if self._live is not None else []

    @property
    def cgroup(self) -> EnvironmentCgroup | None:
        """The running environment's cgroup (None: not running, or none could be made)."""
        return self._live.procs.cgroup if self._live is not None else None

    @property
    def quota_vcpus(self) -> float | None:
        """The CPU quota the running environment has, in vCPUs; None when unthrottled."""
        group = self.cgroup
        return group.vcpus if group is not None else None

    def extension_names(self) -> list[str]:
        """Names the running environment's extensions registered with."""
        if self._live is None:
            return []
        with self._cond:
            return [e.name for e in self._live.state.extensions.values()]

    def telemetry_subscriptions(self) -> list[dict[str, Any]]:
        """Every Telemetry API subscription accepted so far (all environments), with
        the subscribing extension's name under ``"extension"``."""
        with self._cond:
            live = list(self._live.state.subscriptions) if self._live is not None else []
            return self._subscriptions + live

    def telemetry_stats(self) -> dict[str, dict[str, int]]:
        """Per subscriber of the running environment: events delivered, failed batches."""
        return self._live.hub.stats() if self._live is not None else {}

    # -- the phases -----------------------------------------------------------------------

    def start(self) -> float:
        """Run the init phase now (the first invoke does it otherwise); its duration in ms.

        Raises ``SandboxInitError`` when an extension or the runtime fails init.
        """
        with self._control:
            self.open()
            if self._live is not None:
                return self._live.init_ms
            return self._init()

    def invoke(self, event: Any = None) -> InvokeResult:
        """Invoke the function with ``event`` (JSON-able, or bytes sent as they are).

        Returns once the runtime and every extension called ``/next`` (the
        environment is then frozen) or the invocation ended the environment.
        """
        with self._control:
            self.open()
            if self.mode.managed_instances:
                return self.invoke_many([event])[0]
            if self._live is None:
                self._init()
            assert self._live is not None
            if self._live.snapshot is not None and self._live.restored is None:
                restored = self.restore()
                if restored.reset is not None:
                    raise SandboxError(f"the restore failed ({restored.error_type}); the "
                                       "environment was shut down: see the log stream")
            assert self._live is not None
            return self._invoke(self._live, event)

    def invoke_many(self, events: Sequence[Any], *,
                    concurrency: int | None = None) -> list[InvokeResult]:
        """Managed instances: invoke with every event, up to ``concurrency`` (default
        and cap: ``max_concurrency``) at once; results in the order of ``events``."""
        if not self.mode.managed_instances:
            raise SandboxError("invoke_many needs mode='managed-instances'; use invoke()")
        limit = min(concurrency or self.mode.max_concurrency, self.mode.max_concurrency)
        with self._control:
            self.open()
            return concurrent.invoke_many(self, events, concurrency=max(1, limit))

    def snapshot_report(self) -> SnapshotReport | None:
        """SnapStart: what the running environment held open at its snapshot."""
        return self._live.snapshot if self._live is not None else None

    def restore(self, *, after_s: float = 0.0) -> RestoreResult:
        """SnapStart: restore the snapshotted environment (init and snapshot it first if
        need be), ``after_s`` seconds from now. The first invoke does it otherwise."""
        if not self.mode.snap_start:
            raise SandboxError("restore needs mode='snap-start'")
        with self._control:
            self.start()
            live = self._live
            assert live is not None
            if live.snapshot is None or live.restored is not None:
                raise SandboxError("this environment was already restored; a new one is "
                                   "snapshotted after shutdown() and start()")
            live.restored = modes.restore(self, live, live.snapshot, after_s=after_s)
            return live.restored

    def shutdown(self, reason: str = "spindown") -> ShutdownResult:
        """End the environment as Lambda does: thaw, SIGKILL the runtime, SHUTDOWN to the
        extensions with ``deadlineMs = now + shutdown_budget_ms``, SIGKILL at the deadline."""
        with self._control:
            if self._live is None:
                return ShutdownResult(reason, 0, 0.0, {}, [], [])
            return self._teardown(reason)

    # -- init -----------------------------------------------------------------------------

    def _init(self) -> float:
        layout, server = self._opened()
        self._generation += 1
        # A fresh /tmp per environment, except after a reset: Lambda does not clear /tmp
        # before the init that follows a timeout or crash.
        if not (self._reset_tmp and self._tmp_dir is not None):
            self._tmp_dir = layout.root / f"tmp-{self._generation}"
            self._tmp_dir.mkdir()
        tmp_dir, self._reset_tmp = self._tmp_dir, False
        hub = TelemetryHub()
        state = EnvState(self._generation, self._cond, hub, self.function_name, self.handler,
                         init_type=self.mode.init_type)
        live = _Live(state, Processes(self._cond, on_line=self._process_line(hub),
                                      cgroup=self._cgroup()), hub)
        with self._cond:
            server.env = state
        self._live = live
        started = time.monotonic()
        runtime_env = lambda_environment(
            layout, runtime_api=server.address, handler=self.handler,
            function_name=self.function_name, memory_mb=self.memory_mb, region=self.region,
            tmp_dir=tmp_dir, function_env=self._function_env,
        ) | self.mode.environment()
        if self.mode.snap_start:
            runtime_env = modes.container_credentials(runtime_env, state, server.address)
        runtime_version = f"python:{layout.version}.sandbox"
        self._log(f"INIT_START Runtime Version: {runtime_version}\tRuntime Version ARN: "
                  f"arn:aws:lambda:{self.region}::runtime:sandbox")
        hub.emit("platform", "platform.initStart", {
            "initializationType": self.mode.init_type, "phase": "init",
            "runtimeVersion": runtime_version, "functionName": self.function_name,
            "functionVersion": "$LATEST", "instanceMaxMemory": self.memory_mb})
        deadline = started + self.init_timeout_s
        try:
            self._start_extensions(live, layout, self.mode.extension_environment(
                extension_environment(runtime_env, layout)))
            self._await_init(live, deadline, runtime_started=False)
            live.procs.spawn("runtime", "runtime",
                             [layout.python, *layout.python_flags, "-m", "awslambdaric",
                              self.handler],
                             env=self.mode.runtime_environment(runtime_env), cwd=layout.task)
            self._await_init(live, deadline, runtime_started=True)
        except SandboxInitError as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            status = "timeout" if exc.error_type == "Sandbox.Timedout" else "error"
            live.procs.settle(_SETTLE_S)
            self._log(f"INIT_REPORT Init Duration: {elapsed_ms:.2f} ms\tPhase: init\t"
                      f"Status: {status}\tError Type: {exc.error_type}")
            hub.emit("platform", "platform.initReport", {
                "initializationType": self.mode.init_type, "phase": "init", "status": status,
                "errorType": exc.error_type, "metrics": {"durationMs": round(elapsed_ms, 3)}})
            self._teardown("failure")
            raise
        except BaseException:
            self._teardown("failure")
            raise
        live.init_ms = (time.monotonic() - started) * 1000
        live.cpu_mark = live.init_cpu = live.procs.cpu_times()
        hub.emit("platform", "platform.initRuntimeDone",
                 {"initializationType": self.mode.init_type, "phase": "init", "status": "success"})
        hub.emit("platform", "platform.initReport", {
            "initializationType": self.mode.init_type, "phase": "init", "status": "success",
            "metrics": {"durationMs": round(live.init_ms, 3)}})
        if self.mode.snap_start:
            live.snapshot = modes.take_snapshot(self, live)
        else:
            self._freeze(live)
        return live.init_ms

    def _start_extensions(self, live: _Live, layout: Layout, env: Mapping[str, str]) -> None:
        # Lambda starts every extension at once; each registers on its own schedule.
        for path in layout.extensions():
            if not os.access(path, os.X_OK):
                raise SandboxInitError(
                    "Extension.LaunchError",
                    f"{path.name} is not executable (mode {path.stat().st_mode & 0o777:o}): "
                    "files in a layer's extensions/ need mode 0755 in the zip",
                    source=path.name)
            try:
                live.procs.spawn(path.name, "extension", [str(path)], env=env, cwd=layout.task)
            except OSError as exc:
                raise SandboxInitError("Extension.LaunchError", f"cannot start {path}: {exc}",
                                       source=path.name) from exc

    def _await_init(self, live: _Live, deadline: float, *, runtime_started: bool) -> None:
        state, procs = live.state, live.procs

        def ready() -> SandboxInitError | Literal[True] | None:
            failure = self._init_failure(live)
            if failure is not None:
                return failure
            if not runtime_started:
                # Lambda starts the runtime once every extension has registered.
                done = len(state.extensions) >= len(procs.of_kind("extension"))
            else:
                # Init ends when the runtime and every extension called /next.
                done = (state.runtime_next_calls > 0 or state.restore_waiting) and all(
                    e.next_calls > 0 for e in state.extensions.values())
            return True if done else None

        outcome = self._wait_until(ready, deadline)
        if isinstance(outcome, SandboxInitError):
            raise outcome
        if outcome is None:
            with self._cond:
                waiting = [e.name for e in state.extensions.values() if not e.next_calls]
                unregistered = [p.name for p in procs.of_kind("extension")
                                if state.extension_by_name(p.name) is None]
                if runtime_started and not state.runtime_next_calls:
                    waiting.append("runtime")
            what = (f"extensions not registered: {unregistered}" if not runtime_started
                    else f"not yet called /next: {waiting}")
            raise SandboxInitError("Sandbox.Timedout",
                                   f"init did not finish within {self.init_timeout_s:.2f} s "
                                   f"({what})", source=", ".join(unregistered or waiting))

    def _init_failure(self, live: _Live) -> SandboxInitError | None:
        """Called under the condition: an init/error report, or a process that died."""
        report = live.state.init_error
        if report is not None:
            return SandboxInitError(report.error_type, report.message, source=report.source)
        for proc in live.procs.all:
            if proc.exit_code is not None:
                error_type = "Extension.Crash" if proc.kind == "extension" else "Runtime.ExitError"
                return SandboxInitError(
                    error_type, f"{proc.name} exited during init: {_exit_text(proc.exit_code)}",
                    source=proc.name)
        return None

    # -- invoke ---------------------------------------------------------------------------

    def _invoke(self, live: _Live, event: Any) -> InvokeResult:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        live.procs.thaw()
        live.hub.resume()
        now_ms = int(time.time() * 1000)
        invocation = Invocation(
            request_id=str(uuid.uuid4()), event=body,
            deadline_ms=now_ms + round(self.timeout_s * 1000), trace_id=_trace_id(),
            function_arn=self._function_arn, started=time.monotonic(), started_wall_ms=now_ms,
        )
        self._log(f"START RequestId: {invocation.request_id} Version: $LATEST")
        live.hub.emit("platform", "platform.start", {
            "requestId": invocation.request_id, "version": "$LATEST",
            "tracing": tracing(invocation)})
        with self._cond:
            live.state.phase = "invoke"
            live.state.current = invocation
            live.state.for_runtime = invocation
            for ext in live.state.extensions.values():
                if "INVOKE" in ext.events:
                    ext.queue.append({
                        "eventType": "INVOKE", "deadlineMs": invocation.deadline_ms,
                        "requestId": invocation.request_id,
                        "invokedFunctionArn": invocation.function_arn,
                        "tracing": {"type": "X-Amzn-Trace-Id", "value": invocation.trace_id},
                    })
            self._cond.notify_all()
        outcome = self._wait_until(lambda: self._invoke_outcome(live, invocation),
                                   invocation.started + self.timeout_s) or "timeout"
        return self._finish(live, invocation, outcome)

    def _invoke_outcome(self, live: _Live, invocation: Invocation) -> str | None:
        """Called under the condition: how the invoke ended, None while it runs."""
        state = live.state
        if state.exit_error is not None:
            return "exit_error"
        for proc in live.procs.all:
            if proc.exit_code is not None:
                return f"{proc.kind}_crash"
        if invocation.responded is None:
            return None
        runtime_done = invocation.taken and state.runtime_waiting and state.for_runtime is None
        extensions_done = all(
            e.waiting and not e.queue
            and ("INVOKE" not in e.events or e.last_request_id == invocation.request_id)
            for e in state.extensions.values())
        return "done" if runtime_done and extensions_done else None

    def _finish(self, live: _Live, invocation: Invocation, outcome: str) -> InvokeResult:
        now = time.monotonic()
        request_id = invocation.request_id
        with self._cond:
            responded = invocation.responded
            ended = max(live.state.last_next_at, responded or 0.0) if outcome == "done" else now
            failure_type = self._failure_type(live, outcome)
        status: Status = "success" if invocation.error is None else "error"
        error, payload_bytes = invocation.error, invocation.response
        timed_out = (f"{iso_time(time.time())} {request_id} Task timed out after "
                     f"{self.timeout_s:.2f} seconds")
        if outcome == "timeout":
            self._log(timed_out)
        if responded is None:
            error = self._error_document(live, invocation, outcome,
                                         failure_type=failure_type, timed_out=timed_out)
            payload_bytes = json.dumps(error).encode()
            status = "timeout" if outcome == "timeout" else "error"
        runtime_ms = ((responded if responded is not None else now) - invocation.started) * 1000
        post_runtime_ms = (ended - responded) * 1000 if responded is not None else 0.0
        duration_ms = runtime_ms + post_runtime_ms
        billed_ms = math.ceil(duration_ms)
        live.procs.settle(_SETTLE_S)
        max_memory_mb = live.procs.max_memory_mb()
        cpu_now = live.procs.cpu_times()
        cpu, live.cpu_mark = cpu_now - live.cpu_mark, cpu_now
        quota = self.quota_vcpus
        init_ms = live.init_ms if live.report_init else None
        live.report_init = False
        fields = [f"Duration: {duration_ms:.2f} ms", f"Billed Duration: {billed_ms} ms",
                  f"Memory Size: {self.memory_mb} MB", f"Max Memory Used: {max_memory_mb} MB"]
        if init_ms is not None:
            fields.append(f"Init Duration: {init_ms:.2f} ms")
        # Not Lambda's: what the sandbox enforced and measured (log parsers skip them).
        fields += [f"CPU Quota: {quota:.3f} vCPU" if quota is not None else "CPU Quota: none",
                   f"CPU Time: {cpu.total_ms:.2f} ms"]
        if outcome == "timeout":
            fields.append("Status: timeout")
        elif failure_type is not None:
            fields += ["Status: error", f"Error Type: {failure_type}"]
        self._log(f"END RequestId: {request_id}")
        self._log(f"REPORT RequestId: {request_id}\t" + "\t".join(fields))
        metrics: dict[str, Any] = {
            "durationMs": round(duration_ms, 3), "billedDurationMs": billed_ms,
            "memorySizeMB": self.memory_mb, "maxMemoryUsedMB": max_memory_mb}
        if init_ms is not None:
            metrics["initDurationMs"] = round(init_ms, 3)
        report_status = {"done": "success", "timeout": "timeout"}.get(outcome, "failure")
        live.hub.emit("platform", "platform.report", {
            "requestId": request_id, "status": report_status, "metrics": metrics,
            "tracing": tracing(invocation)})
        reset = None
        if outcome == "done":
            self._freeze(live)
        else:
            reset = self._teardown("timeout" if outcome == "timeout" else "failure")
            self._reset_tmp = True
        return InvokeResult(
            request_id=request_id, status=status, payload=_parse(payload_bytes),
            raw_payload=payload_bytes, error=error, caller_ms=runtime_ms, runtime_ms=runtime_ms,
            post_runtime_ms=post_runtime_ms, duration_ms=duration_ms, billed_ms=billed_ms,
            init_ms=init_ms, max_memory_mb=max_memory_mb, started_ms=invocation.started_wall_ms,
            deadline_ms=invocation.deadline_ms, reset=reset, cpu_runtime_ms=cpu.runtime_ms,
            cpu_extensions_ms=cpu.extensions_ms, cpu_quota_vcpus=quota)

    @staticmethod
    def _failure_type(live: _Live, outcome: str) -> str | None:
        """Called under the condition: Lambda's error type for an invoke that ended the
        environment (None for a normal end or a timeout)."""
        if outcome == "exit_error" and live.state.exit_error is not None:
            return live.state.exit_error.error_type
        return {"runtime_crash": "Runtime.ExitError",
                "extension_crash": "Extension.Crash"}.get(outcome)

    def _error_document(
        self, live: _Live, invocation: Invocation, outcome: str, *, failure_type: str | None,
        timed_out: str,
    ) -> dict[str, Any]:
        """What Lambda returns when the runtime never responded; also logged, and told
        to telemetry subscribers as ``platform.runtimeDone``."""
        request_id = invocation.request_id
        with self._cond:
            crashed = next((p for p in live.procs.all if p.exit_code is not None), None)
            exit_error = live.state.exit_error
        if outcome == "timeout":
            error = {"errorType": "Sandbox.Timedout", "errorMessage": timed_out}
        elif exit_error is not None:
            error = {"errorType": exit_error.error_type,
                     "errorMessage": f"RequestId: {request_id} Error: extension "
                                     f"{exit_error.source} reported: {exit_error.message}"}
        else:
            what = ("Runtime" if crashed is None or crashed.kind == "runtime"
                    else f"extension {crashed.name}")
            code = crashed.exit_code if crashed is not None else None
            error = {"errorType": failure_type or "Runtime.ExitError",
                     "errorMessage": f"RequestId: {request_id} Error: {what} exited with "
                                     f"error: {_exit_text(code)}"}
            self._log(str(error["errorMessage"]))
        live.hub.emit("platform", "platform.runtimeDone", {
            "requestId": request_id,
            "status": "timeout" if outcome == "timeout" else "failure",
            "errorType": error["errorType"], "tracing": tracing(invocation),
            "metrics": {"durationMs": round((time.monotonic() - invocation.started) * 1000, 3),
                        "producedBytes": 0}})
        return error

    # -- freeze, shutdown -----------------------------------------------------------------

    def _freeze(self, live: _Live) -> None:
        if not self.mode.managed_instances:  # managed instances never freeze
            live.hub.pause()
            live.procs.freeze()
        with self._cond:
            live.state.phase = "ready"
            live.state.current = None

    def _teardown(self, reason: str) -> ShutdownResult:
        live = self._live
        assert live is not None
        self._live = None
        state, procs = live.state, live.procs
        started = time.monotonic()
        deadline_ms = int(time.time() * 1000) + self.shutdown_budget_ms
        deadline = started + self.shutdown_budget_ms / 1000
        procs.thaw()
        live.hub.resume()
        # The runtime goes first, as on Lambda: SIGTERM, its share of the phase, SIGKILL; the
        # extensions get SHUTDOWN after it, with the phase's deadline.
        runtimes = procs.of_kind("runtime")
        procs.signal_groups(signal.SIGTERM, runtimes)
        self._wait_until(lambda: all(not p.alive for p in runtimes) or None,
                         started + min(RUNTIME_SHUTDOWN_MS, self.shutdown_budget_ms) / 1000)
        procs.signal_groups(signal.SIGKILL, runtimes)
        with self._cond:
            state.phase = "shutdown"
            state.for_runtime = None
            listening = {e.name for e in state.extensions.values() if "SHUTDOWN" in e.events}
            for ext in state.extensions.values():
                if ext.name in listening:
                    ext.queue.append({"eventType": "SHUTDOWN", "shutdownReason": reason,
                                      "deadlineMs": deadline_ms})
            self._cond.notify_all()
        extensions = procs.of_kind("extension")
        self._wait_until(
            lambda: all(not p.alive for p in extensions if p.name in listening) or None,
            deadline)
        with self._cond:
            killed = [p.name for p in extensions if p.alive]
            notified = [e.name for e in state.extensions.values() if e.got_shutdown]
        procs.close()
        duration_ms = (time.monotonic() - started) * 1000
        live.hub.close()
        with self._cond:
            state.phase = "closed"
            self._subscriptions.extend(state.subscriptions)
            self._cond.notify_all()
        return ShutdownResult(reason, deadline_ms, duration_ms,
                              {p.name: p.exit_code for p in extensions}, killed, notified)

    # -- helpers --------------------------------------------------------------------------

    def _cgroup(self) -> EnvironmentCgroup | None:
        """A cgroup for a new environment: the quota, and CPU accounting either way."""
        group = EnvironmentCgroup.create(self.cpu_vcpus)
        if isinstance(group, str):
            if self.cpu_vcpus is not None:
                warn_once(group)
            return None
        return group

    def _opened(self) -> tuple[Layout, LambdaApiServer]:
        if self._layout is None or self._server is None:
            raise SandboxError("the sandbox is not open: use it as a context manager or call "
                               "open() first")
        return self._layout, self._server

    @property
    def _function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{_ACCOUNT_ID}:function:{self.function_name}"

    def _log(self, line: str) -> None:
        assert self._stream is not None
        self._stream.write(line)

    def _process_line(self, hub: TelemetryHub) -> Callable[[Proc, str], None]:
        def on_line(proc: Proc, line: str) -> None:
            self._log(line)
            kind = "function" if proc.kind == "runtime" else "extension"
            hub.emit(kind, kind, line)

        return on_line

    def _wait_until(self, check: Callable[[], _T | None], deadline: float) -> _T | None:
        """Wait on the condition until ``check()`` (called under it) is not None."""
        with self._cond:
            while True:
                result = check()
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


def resolve_cpu_quota(memory_mb: int | None, cpu_quota: bool | float | None) -> float | None:
    """The vCPUs an environment gets, None for no quota: ``True`` derives them from the
    memory as Lambda does, a number sets them, ``False`` is none; ``None`` (the default)
    applies the quota only when ``memory_mb`` was given — a sandbox that states its
    memory size wants Lambda's CPU for it, tests that do not run at full speed."""
    if cpu_quota is None:
        cpu_quota = memory_mb is not None
    if cpu_quota is False:
        return None
    if cpu_quota is True:
        return vcpus_for_memory(256 if memory_mb is None else memory_mb)
    if cpu_quota <= 0:
        raise SandboxError(f"cpu_quota must be a positive number of vCPUs, True or False; "
                           f"got {cpu_quota!r}")
    return float(cpu_quota)


def _trace_id() -> str:
    return (f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
            f"Parent={secrets.token_hex(8)};Sampled=0")


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}"
    return f"exit status {code}"


def _parse(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")
