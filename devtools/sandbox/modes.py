"""Execution modes beyond on-demand: Lambda Managed Instances and SnapStart.

``ModeConfig`` says what a mode changes in the environment's variables and
lifecycle. SnapStart's snapshot and restore live here too (``take_snapshot``,
``restore``); the managed-instances dispatcher is ``devtools.sandbox.concurrent``.

What SnapStart simulation can and cannot do without checkpointing processes:
the snapshot is a SIGSTOP of every process once init is done (runtime in
``/restore/next``, extensions in ``/event/next``); the restore is a SIGCONT after
a real pause, with the telemetry events and the ``/restore/next`` answer Lambda
gives. Whatever the caller does in between (cut connections through a fault
proxy, wait) is what the restored environment finds. Memory is never copied:
two copies restored from one snapshot cannot be run; ``SnapshotReport`` lists
the TCP connections open at the snapshot and the log position, so a test can
prove nothing that must not be shared existed before it.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from devtools.sandbox.apiserver import CREDENTIALS_PATH
from devtools.sandbox.errors import SandboxError
from devtools.sandbox.state import EnvState

if TYPE_CHECKING:
    from devtools.sandbox.sandbox import Sandbox, ShutdownResult, _Live

Mode = Literal["on-demand", "managed-instances", "snap-start"]
INIT_TYPES: dict[str, str] = {"on-demand": "on-demand",
                              "managed-instances": "lambda-managed-instances",
                              "snap-start": "snap-start"}
#: Lambda gives the runtime's after-restore hooks this long.
RESTORE_TIMEOUT_S = 10.0
_TCP_ESTABLISHED = "01"


@dataclass(frozen=True)
class ModeConfig:
    mode: str = "on-demand"
    max_concurrency: int = 1
    runtime_processes: int = 1
    # SnapStart: extensions do not see AWS_LAMBDA_INITIALIZATION_TYPE (whether Lambda shows
    # it to an extension process is not documented); they must tell the mode otherwise.
    hide_init_type: bool = False

    @classmethod
    def create(cls, mode: str, *, max_concurrency: int | None,
               runtime_processes: int | None, hide_init_type: bool = False) -> ModeConfig:
        if mode not in INIT_TYPES:
            raise SandboxError(f"mode must be one of {sorted(INIT_TYPES)}, got {mode!r}")
        if hide_init_type and mode != "snap-start":
            raise SandboxError("hide_init_type applies to mode='snap-start' only")
        if mode != "managed-instances":
            if max_concurrency not in (None, 1) or runtime_processes not in (None, 1):
                raise SandboxError("max_concurrency and runtime_processes apply to "
                                   "mode='managed-instances' only")
            return cls(mode, hide_init_type=hide_init_type)
        concurrency = 2 if max_concurrency is None else max_concurrency
        processes = concurrency if runtime_processes is None else runtime_processes
        if not 1 <= processes <= concurrency:
            raise SandboxError(f"need 1 <= runtime_processes <= max_concurrency, got "
                               f"{processes} and {concurrency}")
        return cls(mode, concurrency, processes)

    @property
    def init_type(self) -> str:
        """The value of ``AWS_LAMBDA_INITIALIZATION_TYPE``."""
        return INIT_TYPES[self.mode]

    @property
    def managed_instances(self) -> bool:
        return self.mode == "managed-instances"

    @property
    def snap_start(self) -> bool:
        return self.mode == "snap-start"

    def environment(self) -> dict[str, str]:
        """Variables every process of the environment sees, over the function's own
        (on-demand changes nothing: ``lambda_environment`` sets it)."""
        if self.mode == "on-demand":
            return {}
        env = {"AWS_LAMBDA_INITIALIZATION_TYPE": self.init_type}
        if self.managed_instances:
            env["AWS_LAMBDA_MAX_CONCURRENCY"] = str(self.max_concurrency)
        return env

    def extension_environment(self, env: dict[str, str]) -> dict[str, str]:
        """The extensions' variables: without the initialization type when it is hidden."""
        if not self.hide_init_type:
            return env
        return {k: v for k, v in env.items() if k != "AWS_LAMBDA_INITIALIZATION_TYPE"}

    def runtime_environment(self, env: dict[str, str]) -> dict[str, str]:
        """The runtime's variables: awslambdaric forks one worker per
        ``AWS_LAMBDA_MAX_CONCURRENCY`` (as the Python runtime does on managed instances),
        so the runtime alone gets ``runtime_processes`` there."""
        if not self.managed_instances:
            return env
        return {**env, "AWS_LAMBDA_MAX_CONCURRENCY": str(self.runtime_processes)}


#: Credential variables a SnapStart environment does not get (they would be frozen
#: into the snapshot): the SDKs use the container credentials endpoint instead.
SNAPSHOT_HIDDEN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def container_credentials(env: dict[str, str], state: EnvState,
                          api_address: str) -> dict[str, str]:
    """SnapStart: move the role's credentials from variables to the container credentials
    endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` + ``AWS_CONTAINER_AUTHORIZATION_TOKEN``),
    as Lambda does."""
    token = secrets.token_urlsafe(32)
    expiration = datetime.fromtimestamp(time.time() + 6 * 3600, tz=timezone.utc)
    state.credentials_token = token
    state.credentials = {
        "AccessKeyId": env["AWS_ACCESS_KEY_ID"], "SecretAccessKey": env["AWS_SECRET_ACCESS_KEY"],
        "Token": env["AWS_SESSION_TOKEN"], "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}
    kept = {k: v for k, v in env.items() if k not in SNAPSHOT_HIDDEN}
    return {**kept, "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{api_address}{CREDENTIALS_PATH}",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token}


@dataclass(frozen=True)
class Connection:
    """An established TCP connection owned by a process of the environment."""

    pid: int
    command: str
    local: tuple[str, int]
    remote: tuple[str, int]


@dataclass(frozen=True)
class SnapshotReport:
    """The environment at the snapshot. ``connections`` leaves out those to the Lambda
    APIs; ``log_index`` is the number of log lines written before the snapshot."""

    wall_ms: int
    log_index: int
    pids: list[int]
    connections: list[Connection]

    def connections_to(self, port: int) -> list[Connection]:
        return [c for c in self.connections if c.remote[1] == port]


@dataclass(frozen=True)
class RestoreResult:
    status: str  # success | failure | timeout
    restore_ms: float  # SIGCONT -> the runtime called /invocation/next again
    paused_ms: float  # how long the environment stayed snapshotted (stopped)
    log_index: int  # log lines written before the restore began
    error_type: str | None = None
    reset: ShutdownResult | None = None


def take_snapshot(sb: Sandbox, live: _Live) -> SnapshotReport:
    """Freeze the initialised environment and record what it holds open."""
    sb._freeze(live)
    live.procs.settle(0.2)  # output written before the snapshot is in the log stream
    api_port = int(sb.runtime_api.rsplit(":", 1)[1])
    pids = live.procs.pids()
    connections = [c for c in established_connections(pids) if c.remote[1] != api_port]
    return SnapshotReport(int(time.time() * 1000), len(sb.log_lines()), pids, connections)


def restore(sb: Sandbox, live: _Live, snapshot: SnapshotReport, *,
            after_s: float) -> RestoreResult:
    """Thaw a snapshotted environment as Lambda restores one: ``platform.restoreStart``,
    the runtime's ``/restore/next`` answered, its after-restore hooks run, then
    ``platform.restoreRuntimeDone`` and ``platform.restoreReport`` once it calls
    ``/invocation/next`` (or ``/restore/error``, or 10 s pass). The environment then
    runs until the next invoke, which freezes it afterwards as usual."""
    if after_s > 0:
        time.sleep(after_s)
    log_index = len(sb.log_lines())
    paused_ms = time.time() * 1000 - snapshot.wall_ms
    state, hub = live.state, live.hub
    started = time.monotonic()
    runtime_version = f"python:{sb._opened()[0].version}.sandbox"
    sb._log(f"RESTORE_START Runtime Version: {runtime_version}\tRuntime Version ARN: "
            f"arn:aws:lambda:{sb.region}::runtime:sandbox")
    live.procs.thaw()
    hub.resume()
    hub.emit("platform", "platform.restoreStart", {
        "runtimeVersion": runtime_version,
        "runtimeVersionArn": f"arn:aws:lambda:{sb.region}::runtime:sandbox",
        "functionName": sb.function_name, "functionVersion": "$LATEST",
        "instanceMaxMemory": sb.memory_mb})
    with sb._cond:
        state.restore_released = True
        sb._cond.notify_all()

    def outcome() -> str | None:
        if state.restore_error is not None:
            return "failure"
        if any(p.exit_code is not None for p in live.procs.all):
            return "failure"
        return "success" if state.runtime_next_calls > 0 else None

    status = sb._wait_until(outcome, started + RESTORE_TIMEOUT_S) or "timeout"
    restore_ms = (time.monotonic() - started) * 1000
    with sb._cond:
        error_type = (state.restore_error.error_type if state.restore_error is not None
                      else "Runtime.ExitError" if status == "failure" else None)
    done: dict[str, object] = {"status": status}
    if error_type is not None:
        done["errorType"] = error_type
    hub.emit("platform", "platform.restoreRuntimeDone", done)
    hub.emit("platform", "platform.restoreReport", {
        "status": status, "metrics": {"durationMs": round(restore_ms, 3)},
        **({"errorType": error_type} if error_type else {})})
    line = f"RESTORE_REPORT Restore Duration: {restore_ms:.2f} ms"
    sb._log(line if status == "success" else f"{line}\tStatus: {status}")
    if status != "success":
        return RestoreResult(status, restore_ms, paused_ms, log_index, error_type or status,
                             sb._teardown("failure"))
    live.report_init = False  # a restored environment's REPORT has no Init Duration
    # Not frozen again: in Lambda the first invocation follows the restore at once, so
    # an extension's after-restore work (on platform.restoreStart) runs meanwhile.
    with sb._cond:
        state.phase = "ready"
    return RestoreResult(status, restore_ms, paused_ms, log_index)


def established_connections(pids: list[int]) -> list[Connection]:
    """Established TCP (v4 and v6) connections whose socket a process in ``pids`` holds."""
    owners: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(target[8:-1], pid)
    found = []
    for table in ("tcp", "tcp6"):
        for local, remote, inode in _tcp_table(Path(f"/proc/net/{table}")):
            if inode in owners:
                pid = owners[inode]
                found.append(Connection(pid, _command(pid), local, remote))
    return found


def _tcp_table(path: Path) -> list[tuple[tuple[str, int], tuple[str, int], str]]:
    try:
        rows = path.read_text().splitlines()[1:]
    except OSError:
        return []
    found = []
    for row in rows:
        fields = row.split()
        if len(fields) > 9 and fields[3] == _TCP_ESTABLISHED:
            found.append((_address(fields[1]), _address(fields[2]), fields[9]))
    return found


def _address(raw: str) -> tuple[str, int]:
    host, port = raw.split(":")
    if len(host) == 8:  # IPv4, little-endian
        octets = bytes.fromhex(host)[::-1]
        return ".".join(str(b) for b in octets), int(port, 16)
    # IPv6: four little-endian 32-bit words; v4-mapped addresses read as v4
    words = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, 32, 8))
    if words[:12] == b"\0" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in words[12:]), int(port, 16)
    return ":".join(words[i:i + 2].hex() for i in range(0, 16, 2)), int(port, 16)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
