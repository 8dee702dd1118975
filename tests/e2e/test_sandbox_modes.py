"""The sandbox's Lambda Managed Instances and SnapStart modes behave as Lambda documents.

Same fixtures as test_sandbox.py: the probe extension logs what the Lambda
APIs tell it, the test function echoes, sleeps or meets its siblings at a
rendezvous (which proves invocations overlap without measuring time).
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.faultproxy import FaultProxy
from devtools.sandbox import Sandbox, SandboxError, SandboxInitError
from devtools.sandbox.environment import process_state
from tests.e2e import test_sandbox as base

make_sandbox = base.make_sandbox  # the fixture: opened sandboxes, no leftover processes
MakeSandbox = base.MakeSandbox
SHUTDOWN_ONLY = {"*": {"events": "auto"}}


def managed(make: MakeSandbox, *, probe: dict[str, object] | None = None,
            **options: object) -> Sandbox:
    return make(probe=SHUTDOWN_ONLY if probe is None else probe, mode="managed-instances",
                **options)


def rendezvous(tmp_path: Path, count: int) -> list[dict[str, object]]:
    marks = tmp_path / f"marks-{count}"
    marks.mkdir()
    return [{"action": "rendezvous", "dir": str(marks), "count": count}] * count


# -- Lambda Managed Instances -------------------------------------------------------------


def test_managed_instances_refuse_an_extension_registering_for_invoke(
        make_sandbox: MakeSandbox) -> None:
    sandbox = managed(make_sandbox, probe={})  # the probe asks for INVOKE and SHUTDOWN

    with pytest.raises(SandboxInitError) as failed:
        sandbox.start()

    assert failed.value.error_type == "Extension.Crash"  # the refused probe exits 1
    registered = base.probe_events(sandbox, "registered")[0]
    assert registered["status"] == 403
    assert registered["body"] == {"errorType": "Extension.InvalidEventType",
                                  "errorMessage": "INVOKE: ErrorInvalidEventType"}


def test_managed_instances_accept_shutdown_only_and_tell_every_process_the_mode(
        make_sandbox: MakeSandbox) -> None:
    sandbox = managed(make_sandbox, max_concurrency=3)

    result = sandbox.invoke({"action": "echo"})
    ended = sandbox.shutdown()

    registered = base.probe_events(sandbox, "registered")[0]
    assert registered["status"] == 200
    mode = {"AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances"}
    runtime_only = {"AWS_LAMBDA_MAX_CONCURRENCY": "3"}
    assert {k: registered["env"].get(k) for k in [*mode, *runtime_only]} == {
        **mode, "AWS_LAMBDA_MAX_CONCURRENCY": None}  # as in Lambda: the runtime's variable
    assert result.status == "success"
    assert {k: result.payload["env"][k] for k in [*mode, *runtime_only]} == {
        **mode, **runtime_only}
    assert result.payload["hooks"] == []  # SnapStart hooks run under SnapStart only
    assert base.probe_events(sandbox, "INVOKE") == []
    assert ended.notified == ["probe"]
    assert ended.exit_codes == {"probe": 0}
    assert ended.killed == []


def test_concurrent_invocations_overlap_in_separate_runtime_processes(
        make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sandbox = managed(make_sandbox, max_concurrency=4)

    met = sandbox.invoke_many(rendezvous(tmp_path, 4), concurrency=4)
    echoed = sandbox.invoke_many([{"action": "echo", "n": n} for n in range(12)])

    assert [r.payload["met"] for r in met] == [True] * 4  # all four ran at the same time
    workers = {r.payload["pid"] for r in met}
    assert len(workers) == 4
    assert [r.payload["event"]["n"] for r in echoed] == list(range(12))
    assert {r.payload["pid"] for r in echoed} <= workers
    assert len({r.request_id for r in met + echoed}) == 16
    lines = sandbox.log_lines()
    for r in met + echoed:
        assert f"START RequestId: {r.request_id} Version: $LATEST" in lines
        assert any(line.startswith(f"REPORT RequestId: {r.request_id}\t") for line in lines)
    # Nothing is frozen between or after invocations.
    assert "T" not in {process_state(pid) for pid in sandbox.pids()}


def test_fewer_runtime_processes_than_concurrency_take_turns(
        make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sandbox = managed(make_sandbox, max_concurrency=4, runtime_processes=2)

    met = sandbox.invoke_many(rendezvous(tmp_path, 2))
    echoed = sandbox.invoke_many([{"action": "echo"}] * 6)

    assert [r.payload["met"] for r in met] == [True, True]
    assert len({r.payload["pid"] for r in met + echoed}) == 2
    assert [r.status for r in echoed] == ["success"] * 6


def test_an_invocation_past_its_timeout_is_reported_but_nothing_is_reset(
        make_sandbox: MakeSandbox) -> None:
    sandbox = managed(make_sandbox, max_concurrency=2, timeout_s=2.0)
    sandbox.start()
    pids = sandbox.pids()

    slow, quick = sandbox.invoke_many([{"action": "sleep", "seconds": 5}, {"action": "echo"}])

    assert slow.status == "timeout"
    assert slow.reset is None
    assert quick.status == "success"
    assert set(pids) <= set(sandbox.pids())  # same environment, same processes
    assert sandbox.invoke({"action": "echo"}).status == "success"


def _reaped_an_extension(sandbox: Sandbox) -> bool:
    live = sandbox._live
    return live is not None and any(p.kind == "extension" and p.exit_code is not None
                                    for p in live.procs.all)


def test_an_extension_crash_replaces_the_whole_environment(make_sandbox: MakeSandbox) -> None:
    sandbox = managed(make_sandbox, max_concurrency=2)
    first = sandbox.invoke({"action": "echo"})
    probe_pid = base.probe_events(sandbox, "registered")[0]["pid"]
    assert isinstance(probe_pid, int)

    os.kill(probe_pid, signal.SIGKILL)
    # Until the sandbox itself reaped it (gone from /proc's live list is not yet that: under
    # load its waiting thread may not have run, and an invoke then finds nothing wrong).
    deadline = time.monotonic() + 5
    while not _reaped_an_extension(sandbox) and time.monotonic() < deadline:
        time.sleep(0.01)
    crashed = sandbox.invoke({"action": "echo"})
    after = sandbox.invoke({"action": "echo"})

    assert crashed.status == "error"
    assert crashed.error is not None
    assert crashed.error["errorType"] == "Extension.Crash"
    assert crashed.reset is not None
    assert crashed.reset.reason == "failure"
    assert after.status == "success"
    assert after.init_ms is not None  # a fresh environment
    assert after.payload["pid"] != first.payload["pid"]
    assert len(base.probe_events(sandbox, "registered")) == 2


def test_managed_instances_take_telemetry_subscriptions_of_the_2025_schema_only(
        make_sandbox: MakeSandbox) -> None:
    old = managed(make_sandbox, probe={"*": {"events": "auto", "telemetry": True}})
    new = managed(make_sandbox, probe={"*": {"events": "auto", "telemetry": True,
                                             "schema": "2025-01-29"}}, max_concurrency=2)

    old.start()
    results = new.invoke_many([{"action": "echo"}] * 4)

    assert base.probe_events(old, "subscribed")[0]["status"] == 400
    assert base.probe_events(new, "subscribed")[0]["status"] == 200
    # What AWS's Managed Instances platform sends per request: start, then report.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = base.probe_events(new, "request_telemetry")
        if sum(e["type"] == "platform.report" for e in seen) >= len(results):
            break
        time.sleep(0.05)
    per_request = {r.request_id: [e["type"] for e in seen
                                  if e["record"].get("requestId") == r.request_id]
                   for r in results}
    assert per_request == {r.request_id: ["platform.start", "platform.report"] for r in results}
    reports = [e["record"] for e in seen if e["type"] == "platform.report"]
    assert {(r["status"], "durationMs" in r["metrics"]) for r in reports} == {("success", True)}
    assert base.probe_events(new, "runtimeDone") == []  # no invoke runtimeDone there


def test_modes_reject_options_that_do_not_apply() -> None:
    options = {"function": base.FUNCTION, "handler": base.HANDLER}
    with pytest.raises(SandboxError, match="mode must be one of"):
        Sandbox(mode="provisioned", **options)  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="managed-instances"):
        Sandbox(max_concurrency=4, **options)  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="runtime_processes <= max_concurrency"):
        Sandbox(mode="managed-instances", max_concurrency=2, runtime_processes=3,
                **options)  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="snap-start"):
        Sandbox(**options).restore()  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="hide_init_type"):
        Sandbox(hide_init_type=True, **options)  # type: ignore[arg-type]


# -- SnapStart ------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(64):
            self.request.sendall(data)


@pytest.fixture
def remote() -> Iterator[FaultProxy]:
    """A TCP peer (an echo server: the probe checks its socket still carries bytes)
    behind the fault proxy, standing for the broker."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with FaultProxy(f"127.0.0.1:{server.server_address[1]}") as proxy:
            yield proxy
    finally:
        server.shutdown()
        server.server_close()


def snap_start(make: MakeSandbox, **probe: object) -> Sandbox:
    return make(probe={"*": {"telemetry": True, **probe}}, mode="snap-start")


def test_snap_start_inits_snapshots_then_restores_with_telemetry(
        make_sandbox: MakeSandbox) -> None:
    sandbox = snap_start(make_sandbox)

    sandbox.start()
    snapshot = sandbox.snapshot_report()
    assert snapshot is not None
    assert {process_state(pid) for pid in snapshot.pids} == {"T"}  # stopped at the snapshot
    restored = sandbox.restore()
    result = sandbox.invoke({"action": "echo"})

    assert restored.status == "success"
    assert restored.reset is None
    registered = base.probe_events(sandbox, "registered")[0]
    assert registered["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == "snap-start"
    assert result.payload["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == "snap-start"
    sandbox.wait_for_log(r'"type": "platform.restoreReport"')
    seen = [e["type"] for e in base.probe_events(sandbox, "telemetry")]
    assert seen == ["platform.restoreStart", "platform.restoreRuntimeDone",
                    "platform.restoreReport"]
    lines = sandbox.log_lines()
    restore_at = next(i for i, line in enumerate(lines) if line.startswith("RESTORE_START"))
    assert restore_at >= snapshot.log_index
    assert any(line.startswith("RESTORE_REPORT Restore Duration: ") for line in lines)
    assert "Init Duration" not in base.report_fields(sandbox, result.request_id)
    assert result.init_ms is None
    assert result.payload["hooks"] == ["before_snapshot", "after_restore"]
    before = next(i for i, line in enumerate(lines) if '"function": "before_snapshot"' in line)
    after = next(i for i, line in enumerate(lines) if '"function": "after_restore"' in line)
    assert before < snapshot.log_index <= restored.log_index <= after


def test_snap_start_can_hide_the_initialization_type_from_extensions_only(
        make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(probe={"*": {"telemetry": True}}, mode="snap-start",
                           hide_init_type=True)

    sandbox.start()
    sandbox.restore()
    result = sandbox.invoke({"action": "echo"})

    registered = base.probe_events(sandbox, "registered")[0]
    assert registered["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] is None  # unset
    assert result.payload["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == "snap-start"


def test_snap_start_serves_the_role_credentials_from_the_container_endpoint_only(
        make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(mode="snap-start")

    result = sandbox.invoke({"action": "credentials"})

    registered = base.probe_events(sandbox, "registered")[0]
    assert registered["env"]["AWS_SESSION_TOKEN"] is None  # not frozen into the snapshot
    assert result.status == "success"
    assert result.payload["variables"] is False
    assert result.payload["access_key"].startswith("ASIA")  # botocore's container provider
    assert result.payload["token"] is True


def test_a_failing_after_restore_hook_fails_the_restore_and_ends_the_environment(
        make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(mode="snap-start", env={"SANDBOX_FAIL_RESTORE": "1"})

    restored = sandbox.restore()

    assert restored.status == "failure"
    assert restored.error_type == "Runtime.AfterRestoreError"  # awslambdaric's restore/error
    assert restored.reset is not None
    assert restored.reset.reason == "failure"
    assert sandbox.pids() == []
    assert any(line.startswith("RESTORE_REPORT") and "Status: failure" in line
               for line in sandbox.log_lines())


def test_the_first_invoke_restores_a_snapshotted_environment(make_sandbox: MakeSandbox) -> None:
    sandbox = snap_start(make_sandbox)

    result = sandbox.invoke({"action": "echo"})

    assert result.status == "success"
    assert any(line.startswith("RESTORE_START") for line in sandbox.log_lines())
    with pytest.raises(SandboxError, match="already restored"):
        sandbox.restore()


def test_a_connection_open_at_the_snapshot_is_listed_and_dead_after_the_restore(
        make_sandbox: MakeSandbox, remote: FaultProxy) -> None:
    sandbox = snap_start(make_sandbox, hold_connection={"port": remote.port, "when": "init"})

    sandbox.start()
    snapshot = sandbox.snapshot_report()
    assert snapshot is not None
    remote.cut()  # the restored copy runs elsewhere: its sockets are gone
    remote.restore()
    restored = sandbox.restore()

    probe_pid = base.probe_events(sandbox, "registered")[0]["pid"]
    held = snapshot.connections_to(remote.port)
    assert [c.pid for c in held] == [probe_pid]
    assert restored.status == "success"
    sandbox.wait_for_log(r'"event": "connection"')
    assert [e["alive"] for e in base.probe_events(sandbox, "connection")] == [False]


def test_a_connection_opened_on_restore_is_absent_from_the_snapshot_and_works(
        make_sandbox: MakeSandbox, remote: FaultProxy) -> None:
    sandbox = snap_start(make_sandbox, hold_connection={"port": remote.port, "when": "restore"})

    sandbox.start()
    snapshot = sandbox.snapshot_report()
    restored = sandbox.restore()
    sandbox.wait_for_log(r'"event": "connection"')

    assert snapshot is not None
    assert snapshot.connections_to(remote.port) == []
    lines = sandbox.log_lines()
    connected_at = next(i for i, line in enumerate(lines) if '"event": "connected"' in line)
    assert connected_at >= restored.log_index  # opened after the restore began
    assert [e["alive"] for e in base.probe_events(sandbox, "connection")] == [True]
    assert json.loads(lines[connected_at])["port"] == remote.port
