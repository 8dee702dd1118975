"""The local Lambda sandbox behaves like Lambda's execution environment.

A probe extension (tests/fixtures/sandbox/probe_layer) logs every event it
gets as JSON lines and misbehaves on request; the test function
(tests/fixtures/sandbox/function) echoes, sleeps, raises or crashes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox, SandboxError, SandboxInitError, cgroup
from devtools.sandbox.__main__ import main as sandbox_cli
from devtools.sandbox.cgroup import EnvironmentCgroup, Hierarchies, quota_us, vcpus_for_memory
from devtools.sandbox.environment import Processes, process_state
from devtools.sandbox.logstream import OutputPump
from devtools.sandbox.sandbox import RUNTIME_SHUTDOWN_MS
from devtools.sandbox.telemetry import Destination, TelemetryHub, TelemetryRequestError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "sandbox"
PROBE_LAYER = FIXTURES / "probe_layer"
PROBE = PROBE_LAYER / "extensions" / "probe"
FUNCTION = FIXTURES / "function"
HANDLER = "handlers.dispatch"

MakeSandbox = Callable[..., Sandbox]


def _leftover_processes(roots: list[Path]) -> list[str]:
    """Processes whose command line or working directory lies in a sandbox's temp dir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if any(str(root) in cmdline or cwd.startswith(str(root)) for root in roots):
            found.append(f"{entry}: {cmdline}")
    return found


@pytest.fixture
def make_sandbox() -> Iterator[MakeSandbox]:
    """Opened sandboxes with the probe layer and test function; no process may outlive them."""
    made: list[Sandbox] = []

    def make(*, probe: dict[str, Any] | None = None, layers: list[Path] | None = None,
             env: dict[str, str] | None = None, handler: str = HANDLER,
             function: Path = FUNCTION, **options: Any) -> Sandbox:
        sandbox = Sandbox(layers=[PROBE_LAYER] if layers is None else layers, function=function,
                          handler=handler,
                          env={"SANDBOX_PROBE": json.dumps(probe or {}), **(env or {})},
                          **options)
        made.append(sandbox)
        return sandbox.open()

    yield make
    roots = [sandbox.opt_dir.parent for sandbox in made]
    for sandbox in made:
        sandbox.close()
    assert _leftover_processes(roots) == []


def probe_events(sandbox: Sandbox, event: str | None = None) -> list[dict[str, Any]]:
    found = []
    for line in sandbox.log_lines():
        if line.startswith('{"probe"'):
            entry = json.loads(line)
            if event is None or entry["event"] == event:
                found.append(entry)
    return found


def line_index(sandbox: Sandbox, pattern: str) -> int:
    lines = sandbox.log_lines()
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def report_fields(sandbox: Sandbox, request_id: str) -> dict[str, str]:
    line = sandbox.wait_for_log(f"^REPORT RequestId: {request_id}\t")
    return dict(field.split(": ", 1) for field in line.split("\t")[1:])


def probe_layer_named(tmp_path: Path, name: str) -> Path:
    """A second layer holding the probe under another file name (extension name)."""
    layer = tmp_path / f"layer-{name}"
    (layer / "extensions").mkdir(parents=True)
    shutil.copy2(PROBE, layer / "extensions" / name)
    return layer


def test_extensions_register_before_the_runtime_starts_and_get_each_invoke(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox(timeout_s=3.0, env={"SANDBOX_FUNCTION_VAR": "from-caller"})
    results = [sandbox.invoke({"action": "echo", "n": n}) for n in range(2)]

    registered = probe_events(sandbox, "registered")[0]
    function_init = json.loads(sandbox.wait_for_log(r'^\{"function": "init"'))
    assert line_index(sandbox, '"event": "registered"') < line_index(sandbox, '"function": "init"')
    assert registered["wall_ms"] <= function_init["wall_ms"]
    assert registered["body"] == {"functionName": "kafka-relay-sandbox",
                                  "functionVersion": "$LATEST", "handler": HANDLER}
    # Lambda hides the runtime's variables from extensions, not the credentials.
    assert registered["env"]["_HANDLER"] is None
    assert registered["env"]["LAMBDA_TASK_ROOT"] is None
    assert registered["env"]["AWS_EXECUTION_ENV"] is None
    assert registered["env"]["AWS_SESSION_TOKEN"]

    invokes = [e["payload"] for e in probe_events(sandbox, "INVOKE")]
    assert [i["requestId"] for i in invokes] == [r.request_id for r in results]
    for result, invoke in zip(results, invokes, strict=True):
        assert result.status == "success"
        assert result.payload["request_id"] == result.request_id
        assert result.payload["event"]["n"] == results.index(result)
        assert invoke["deadlineMs"] == result.deadline_ms
        assert abs(result.deadline_ms - result.started_ms - 3000) <= 1
        # the handler ran after the invoke started, against its 3 s deadline
        assert 0 < result.payload["remaining_ms"] <= result.deadline_ms - result.started_ms
        assert invoke["invokedFunctionArn"] == result.payload["function_arn"]
        assert invoke["tracing"]["type"] == "X-Amzn-Trace-Id"

    env = results[0].payload["env"]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{version}"
    assert env["LAMBDA_TASK_ROOT"] == str(sandbox.task_root)
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/kafka-relay-sandbox"
    assert env["TZ"] == ":UTC"
    assert env["SANDBOX_FUNCTION_VAR"] == "from-caller"


def test_environment_is_frozen_between_invokes(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    ticks = tmp_path / "ticks"
    sandbox = make_sandbox(probe={"probe": {"ticker_file": str(ticks), "post_invoke_ms": 100}})
    sandbox.invoke({"action": "echo"})

    pids = sandbox.pids()
    assert len(pids) >= 2  # the probe and the runtime
    assert {process_state(pid) for pid in pids} == {"T"}
    frozen_at = int(ticks.read_text())
    time.sleep(0.3)
    assert int(ticks.read_text()) == frozen_at  # its ticker thread does not run while frozen

    sandbox.invoke({"action": "echo"})  # thawed for the invoke (>= 100 ms of probe work)
    assert int(ticks.read_text()) > frozen_at + 5
    assert {process_state(pid) for pid in sandbox.pids()} == {"T"}


def test_report_lines_bill_until_every_extension_called_next(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(probe={"probe": {"post_invoke_ms": 120}})
    results = [sandbox.invoke({"action": "echo"}) for _ in range(3)]

    assert results[0].init_ms is not None
    assert [r.init_ms for r in results[1:]] == [None, None]
    for result in results:
        fields = report_fields(sandbox, result.request_id)
        assert fields["Duration"] == f"{result.duration_ms:.2f} ms"
        assert fields["Billed Duration"] == f"{result.billed_ms} ms"
        assert fields["Memory Size"] == "256 MB"
        assert fields["Max Memory Used"] == f"{result.max_memory_mb} MB"
        assert ("Init Duration" in fields) == (result.init_ms is not None)
        # The caller waits for the handler only; Lambda bills until the probe's /next too.
        # The probe's 120 ms start when it gets INVOKE, after the invoke started.
        assert result.post_runtime_ms > 0  # billed on after the caller got its answer
        assert result.post_runtime_ms >= 120 - result.caller_ms
        assert result.duration_ms == pytest.approx(result.caller_ms + result.post_runtime_ms)
        assert result.billed_ms >= result.duration_ms >= 120
        assert result.max_memory_mb > 5
        done = line_index(sandbox, f'"post_invoke_done".*{result.request_id}')
        assert line_index(sandbox, f"^START RequestId: {result.request_id} ") < done
        assert done < line_index(sandbox, f"^END RequestId: {result.request_id}$")
    first = report_fields(sandbox, results[0].request_id)
    assert first["Init Duration"] == f"{results[0].init_ms:.2f} ms"


def test_spindown_shutdown_has_a_2s_deadline_and_kills_an_extension_ignoring_it(
    make_sandbox: MakeSandbox, tmp_path: Path,
) -> None:
    sandbox = make_sandbox(layers=[PROBE_LAYER, probe_layer_named(tmp_path, "stubborn")],
                           probe={"stubborn": {"ignore_shutdown": True}})
    sandbox.invoke({"action": "echo"})
    assert sorted(sandbox.extension_names()) == ["probe", "stubborn"]
    pids = sandbox.pids()

    asked_ms = time.time() * 1000
    result = sandbox.shutdown()
    answered_ms = time.time() * 1000

    assert result.reason == "spindown"
    # 2 s from the moment the shutdown was asked for (between asking and the answer)
    assert asked_ms + 1990 <= result.deadline_ms <= answered_ms + 2000
    assert sorted(result.notified) == ["probe", "stubborn"]
    assert result.killed == ["stubborn"]
    assert result.exit_codes == {"probe": 0, "stubborn": -9}
    assert result.duration_ms >= 1950  # waited out the deadline before the SIGKILL
    for entry in probe_events(sandbox, "SHUTDOWN"):
        assert entry["payload"] == {"eventType": "SHUTDOWN", "shutdownReason": "spindown",
                                    "deadlineMs": result.deadline_ms}
    assert {e["probe"] for e in probe_events(sandbox, "SHUTDOWN")} == {"probe", "stubborn"}
    assert [pid for pid in pids if process_state(pid) is not None] == []
    assert sandbox.pids() == []


def test_at_shutdown_the_runtime_has_its_share_before_the_extensions_get_shutdown(
    make_sandbox: MakeSandbox, tmp_path: Path,
) -> None:
    function = tmp_path / "lingering"
    function.mkdir()
    (function / "lingering.py").write_text(
        "import signal\n\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\n\n"
        "def handler(event, context):\n    return {}\n")
    sandbox = make_sandbox(function=function, handler="lingering.handler")
    sandbox.invoke({})
    result = sandbox.shutdown()

    (shutdown,) = probe_events(sandbox, "SHUTDOWN")
    # A runtime that does not end on SIGTERM keeps its whole share of the phase; the
    # extension gets SHUTDOWN after that, with the phase's deadline.
    assert shutdown["payload"]["deadlineMs"] == result.deadline_ms
    assert result.deadline_ms - shutdown["wall_ms"] <= 2000 - RUNTIME_SHUTDOWN_MS + 5


def test_extension_init_error_fails_init_with_its_error_type(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(probe={"probe": {"init_error": "Extension.ConfigError"}})

    with pytest.raises(SandboxInitError) as failure:
        sandbox.start()

    assert failure.value.error_type == "Extension.ConfigError"
    assert failure.value.source == "probe"
    assert "told to fail init" in failure.value.message
    assert probe_events(sandbox, "init_error")[0]["errorType"] == "Extension.ConfigError"
    report = sandbox.wait_for_log("^INIT_REPORT ")
    assert "\tStatus: error\tError Type: Extension.ConfigError" in report
    assert not any('"function": "init"' in line for line in sandbox.log_lines())
    assert sandbox.pids() == []


def test_extension_that_is_not_executable_fails_init_with_launch_error(
    make_sandbox: MakeSandbox, tmp_path: Path,
) -> None:
    layer = probe_layer_named(tmp_path, "plain")
    (layer / "extensions" / "plain").chmod(0o644)
    sandbox = make_sandbox(layers=[PROBE_LAYER, layer])

    with pytest.raises(SandboxInitError) as failure:
        sandbox.invoke({"action": "echo"})

    assert failure.value.error_type == "Extension.LaunchError"
    assert "plain is not executable" in failure.value.message
    assert sandbox.pids() == []


def test_extension_that_never_registers_times_init_out(
    make_sandbox: MakeSandbox, tmp_path: Path,
) -> None:
    layer = tmp_path / "silent-layer"
    (layer / "extensions").mkdir(parents=True)
    (layer / "extensions" / "silent").write_text("#!/bin/sh\nexec sleep 60\n")
    (layer / "extensions" / "silent").chmod(0o755)
    sandbox = make_sandbox(layers=[PROBE_LAYER, layer], init_timeout_s=0.5)

    started = time.monotonic()
    with pytest.raises(SandboxInitError) as failure:
        sandbox.start()

    assert failure.value.error_type == "Sandbox.Timedout"
    assert "extensions not registered: ['silent']" in failure.value.message
    assert time.monotonic() - started >= 0.5
    assert "\tStatus: timeout\t" in sandbox.wait_for_log("^INIT_REPORT ")
    assert sandbox.pids() == []


def test_runtime_init_error_reports_the_runtime_error_type(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(handler="no_such_module.handler")

    with pytest.raises(SandboxInitError) as failure:
        sandbox.invoke({})

    assert failure.value.error_type == "Runtime.ImportModuleError"
    assert failure.value.source == "runtime"
    assert "no_such_module" in failure.value.message
    assert probe_events(sandbox, "SHUTDOWN")[0]["payload"]["shutdownReason"] == "failure"
    assert sandbox.pids() == []


def test_function_timeout_resets_the_environment(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(timeout_s=1.0)
    first = sandbox.invoke({"action": "echo"})
    first_pids = set(sandbox.pids())

    timed_out = sandbox.invoke({"action": "sleep", "seconds": 5})

    assert timed_out.status == "timeout"
    assert timed_out.error is not None
    assert timed_out.error["errorMessage"].endswith(
        f"{timed_out.request_id} Task timed out after 1.00 seconds")
    assert timed_out.runtime_ms >= 1000
    assert timed_out.reset is not None
    assert timed_out.reset.reason == "timeout"
    assert timed_out.reset.notified == ["probe"]
    assert timed_out.reset.killed == []
    shutdown = probe_events(sandbox, "SHUTDOWN")[0]["payload"]
    assert shutdown["shutdownReason"] == "timeout"
    assert report_fields(sandbox, timed_out.request_id)["Status"] == "timeout"
    assert [pid for pid in first_pids if process_state(pid) is not None] == []

    fresh = sandbox.invoke({"action": "echo"})
    assert fresh.status == "success"
    assert first.init_ms is not None
    assert fresh.init_ms is not None
    assert "Init Duration" in report_fields(sandbox, fresh.request_id)
    assert "Init Duration" not in report_fields(sandbox, timed_out.request_id)
    assert first_pids.isdisjoint(sandbox.pids())
    assert len(probe_events(sandbox, "registered")) == 2


def test_extension_overrunning_the_deadline_is_timed_out_after_the_caller_got_its_answer(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox(timeout_s=0.5, shutdown_budget_ms=300,
                           probe={"probe": {"post_invoke_ms": 3000}})

    result = sandbox.invoke({"action": "echo"})

    assert result.status == "success"  # the response went out before the extension overran
    assert result.payload["event"] == {"action": "echo"}
    assert result.caller_ms < result.duration_ms  # answered before the extension overran
    assert result.duration_ms >= 500
    assert report_fields(sandbox, result.request_id)["Status"] == "timeout"
    assert result.reset is not None
    assert result.reset.reason == "timeout"
    assert result.reset.killed == ["probe"]  # still busy at the SHUTDOWN deadline
    assert result.reset.exit_codes == {"probe": -9}
    assert result.reset.duration_ms >= 250


def test_telemetry_batches_honour_max_items_and_timeout() -> None:
    batches: list[tuple[float, list[dict[str, Any]]]] = []

    def post(destination: Destination, body: bytes) -> None:
        assert (destination.host, destination.port, destination.path) == ("127.0.0.1", 9, "/t")
        batches.append((time.monotonic(), json.loads(body)))

    hub = TelemetryHub(post=post)
    subscription = {"schemaVersion": "2022-12-13",
                    "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:9/t"},
                    "types": ["function"],
                    "buffering": {"maxItems": 25, "maxBytes": 262144, "timeoutMs": 1000}}
    try:
        hub.subscribe("subscriber", subscription)
        started = time.monotonic()
        for n in range(30):
            hub.emit("function", "function", f"line {n}")
        hub.emit("platform", "platform.start", {"requestId": "not subscribed"})
        deadline = started + 5
        while sum(len(b) for _, b in batches) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        hub.close()

    assert [len(batch) for _, batch in batches] == [25, 5]
    assert batches[1][0] - started >= 1.0  # the rest waited timeoutMs
    # maxItems reached: the first 25 went at once, not with the rest at timeoutMs (lower
    # bounds only: a loaded machine may post late, never early)
    assert batches[1][0] - batches[0][0] >= 0.5
    assert batches[0][1][0]["type"] == "function"
    assert batches[0][1][0]["record"] == "line 0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", batches[0][1][0]["time"])
    outside = {**subscription, "destination": {"protocol": "HTTP", "URI": "http://10.0.0.1:80/"}}
    with pytest.raises(TelemetryRequestError, match=r"sandbox\.localdomain"):
        hub.subscribe("subscriber", outside)
    with pytest.raises(TelemetryRequestError, match="maxItems"):
        hub.subscribe("subscriber", {**subscription, "buffering": {"maxItems": 5}})


def test_a_process_writing_at_once_keeps_its_output_pipe_and_every_line() -> None:
    # A pump reads nothing before start(), and spawn() starts it once the process's record
    # exists: a line read earlier had no process to go to, the pump ended and closed the
    # pipe, and the process's next write failed (an extension exited 120 during init).
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"written before the reader starts\n")
    lines: list[str] = []
    pump = OutputPump(read_fd, lines.append, name="early")
    time.sleep(0.05)  # a reading pump would have taken the line by now
    assert lines == []
    assert not pump.settled()  # still in the pipe
    pump.start()
    os.write(write_fd, b"after\n")
    os.close(write_fd)
    pump.join(5)
    assert lines == ["written before the reader starts", "after"]

    cond = threading.Condition()
    seen: list[tuple[str, str]] = []
    procs = Processes(cond, on_line=lambda proc, line: seen.append((proc.name, line)))
    try:
        writer = procs.spawn("writer", "extension",
                             [sys.executable, "-c", "print('at once', flush=True)"],
                             env=os.environ, cwd=REPO)
        with cond:
            cond.wait_for(lambda: writer.exit_code is not None, 10)
        writer.pump.join(5)
    finally:
        procs.close()
    assert (writer.exit_code, seen) == (0, [("writer", "at once")])


def test_telemetry_subscriber_gets_runtime_done_for_each_invoke(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox(probe={"probe": {"telemetry": True}})
    results = [sandbox.invoke({"action": action}) for action in ("echo", "fail", "echo")]

    [subscription] = sandbox.telemetry_subscriptions()
    assert subscription["extension"] == "probe"
    assert subscription["destination"]["URI"].startswith("http://sandbox.localdomain:")
    done = {e["requestId"]: e for e in probe_events(sandbox, "runtimeDone")}
    assert [done[r.request_id]["status"] for r in results] == ["success", "error", "success"]
    assert [r.status for r in results] == ["success", "error", "success"]
    for result in results:
        assert done[result.request_id]["durationMs"] == pytest.approx(result.runtime_ms, abs=1)
        # The probe learnt the handler finished before it let the environment freeze.
        handler_done = line_index(sandbox, f'"handler_done".*{result.request_id}.*"seen": true')
        assert handler_done < line_index(sandbox, f"^END RequestId: {result.request_id}$")


def test_function_error_keeps_the_environment_and_a_runtime_crash_resets_it(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = make_sandbox()
    sandbox.invoke({"action": "echo"})
    pids = sandbox.pids()

    failed = sandbox.invoke({"action": "fail", "message": "bad feed"})
    assert failed.status == "error"
    assert failed.error is not None
    assert (failed.error["errorType"], failed.error["errorMessage"]) == ("ValueError", "bad feed")
    assert failed.reset is None
    assert sandbox.pids() == pids

    crashed = sandbox.invoke({"action": "crash"})
    assert crashed.status == "error"
    assert crashed.error is not None
    assert crashed.error["errorType"] == "Runtime.ExitError"
    assert "Runtime exited with error: exit status 3" in crashed.error["errorMessage"]
    assert crashed.reset is not None
    assert crashed.reset.reason == "failure"
    assert probe_events(sandbox, "SHUTDOWN")[0]["payload"]["shutdownReason"] == "failure"
    assert report_fields(sandbox, crashed.request_id)["Error Type"] == "Runtime.ExitError"

    assert sandbox.invoke({"action": "echo"}).init_ms is not None


@pytest.mark.parametrize(
    ("misbehaviour", "error_type", "exit_code"),
    [("crash_on_invoke", "Extension.Crash", 7),
     ("exit_error_on_invoke", "Extension.ProbeError", 1)],
)
def test_extension_dying_during_an_invoke_resets_with_failure(
    make_sandbox: MakeSandbox, tmp_path: Path, misbehaviour: str, error_type: str, exit_code: int,
) -> None:
    sandbox = make_sandbox(layers=[PROBE_LAYER, probe_layer_named(tmp_path, "dying")],
                           probe={"dying": {misbehaviour: 2}})
    assert sandbox.invoke({"action": "echo"}).reset is None

    result = sandbox.invoke({"action": "echo"})

    assert result.reset is not None
    assert result.reset.reason == "failure"
    assert result.reset.exit_codes == {"probe": 0, "dying": exit_code}
    assert result.reset.notified == ["probe"]
    assert report_fields(sandbox, result.request_id)["Error Type"] == error_type
    assert sandbox.invoke({"action": "echo"}).init_ms is not None  # a fresh environment


def test_function_sees_only_the_runtime_packages_and_its_zip(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()

    boto3 = sandbox.invoke({"action": "import", "module": "boto3"})
    # confluent_kafka is in the test virtualenv, but not in Lambda's runtime nor this zip.
    kafka = sandbox.invoke({"action": "import", "module": "confluent_kafka"})

    assert boto3.status == "success"
    assert kafka.status == "error"
    assert kafka.error is not None
    assert kafka.error["errorType"] == "ModuleNotFoundError"


def test_cli_invokes_and_prints_responses_then_the_log_stream(tmp_path: Path) -> None:
    log = tmp_path / "stream.log"
    done = subprocess.run(
        [sys.executable, "-m", "devtools.sandbox", "--layer", str(PROBE_LAYER), "--function",
         str(FUNCTION), "--handler", HANDLER, "--event", '{"action": "echo"}',
         "--invocations", "2", "--env", "SANDBOX_FUNCTION_VAR=cli", "--log", str(log)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    responses = [json.loads(line) for line in done.stdout.splitlines()
                 if line.startswith('{"invocation"')]
    assert [r["status"] for r in responses] == ["success", "success"]
    assert responses[0]["payload"]["env"]["SANDBOX_FUNCTION_VAR"] == "cli"
    assert done.stdout.count("\nREPORT RequestId: ") == 2
    assert log.read_text().count("REPORT RequestId: ") == 2


def test_cli_exits_non_zero_when_an_invoke_fails() -> None:
    out = io.StringIO()
    code = sandbox_cli(["--function", str(FUNCTION), "--handler", HANDLER,
                        "--event", '{"action": "fail"}'], out=out, err=io.StringIO())
    assert code == 1
    assert '"status": "error"' in out.getvalue()


# -- CPU: Lambda's memory-proportional quota, and CPU time per invocation ------------------------

_BURN = """
import os, time

def handler(event, context):
    # Busy for the asked CPU time (not wall time: the quota stretches wall time).
    until = time.process_time() + event.get("cpu_ms", 0) / 1000
    while time.process_time() < until:
        pass
    with open("/proc/self/cgroup") as groups:
        return {"pid": os.getpid(), "cgroup": groups.read()}
"""


@pytest.fixture
def burn_function(tmp_path: Path) -> Path:
    directory = tmp_path / "burn"
    directory.mkdir()
    (directory / "burn.py").write_text(_BURN)
    return directory


def _cgroups_available() -> EnvironmentCgroup:
    group = EnvironmentCgroup.create(None, label="kafka-relay-sandbox-probe")
    if isinstance(group, str):
        pytest.skip(f"no CPU quota possible here: {group}")
    assert group.remove()
    return group


def test_environment_runs_in_its_cgroup_under_the_memory_derived_cpu_quota(
    make_sandbox: MakeSandbox, burn_function: Path,
) -> None:
    _cgroups_available()
    sandbox = make_sandbox(function=burn_function, handler="burn.handler", memory_mb=512)
    result = sandbox.invoke({})

    group = sandbox.cgroup
    assert group is not None
    assert sandbox.quota_vcpus == result.cpu_quota_vcpus == pytest.approx(512 / 1769)
    assert group.quota() == f"{quota_us(512 / 1769)} 100000"  # 28943 µs per 100 ms
    # Every process of the environment (runtime, probe extension) is inside it, and the
    # runtime saw itself there while running the handler.
    pids = sandbox.pids()
    assert len(pids) >= 2
    assert set(pids) <= set(group.pids())
    assert result.payload["pid"] in pids
    assert group.name in result.payload["cgroup"]
    assert report_fields(sandbox, result.request_id)["CPU Quota"] == "0.289 vCPU"

    sandbox.shutdown("spindown")
    assert sandbox.cgroup is None
    assert group.pids() == []
    assert not any((h / group.name).exists() for h in _hierarchy_roots())


def _hierarchy_roots() -> list[Path]:
    found = Hierarchies.find()
    assert not isinstance(found, str)
    return [found.cpu, found.accounting]


def test_cpu_time_of_the_environment_is_measured_per_invocation(
    make_sandbox: MakeSandbox, burn_function: Path,
) -> None:
    sandbox = make_sandbox(function=burn_function, handler="burn.handler")
    idle = sandbox.invoke({})
    busy = sandbox.invoke({"cpu_ms": 200})

    assert busy.cpu_runtime_ms >= 190
    assert idle.cpu_runtime_ms < busy.cpu_runtime_ms - 150
    assert busy.cpu_ms == busy.cpu_runtime_ms + busy.cpu_extensions_ms
    assert report_fields(sandbox, busy.request_id)["CPU Time"] == f"{busy.cpu_ms:.2f} ms"


def test_quota_applies_only_where_memory_is_stated_unless_asked(
    make_sandbox: MakeSandbox,
) -> None:
    _cgroups_available()
    default = make_sandbox()
    first = default.invoke({"action": "echo"})
    assert first.cpu_quota_vcpus is None
    assert report_fields(default, first.request_id)["CPU Quota"] == "none"
    assert make_sandbox(memory_mb=1769, cpu_quota=False).cpu_vcpus is None
    assert make_sandbox(cpu_quota=True).cpu_vcpus == pytest.approx(vcpus_for_memory(256))
    assert make_sandbox(memory_mb=1769).cpu_vcpus == pytest.approx(1.0)
    assert make_sandbox(cpu_quota=0.5).cpu_vcpus == 0.5
    with pytest.raises(SandboxError, match="cpu_quota"):
        make_sandbox(cpu_quota=0.0)


def test_cgroup_hierarchies_are_found_on_v1_and_v2_hosts(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"30 23 0:26 / {unified} rw,nosuid - cgroup2 cgroup2 rw\n")
    assert Hierarchies.find(info) == Hierarchies(unified, True, unified, True)

    info.write_text("31 23 0:27 / /cg/cpu rw - cgroup cgroup rw,cpu\n"
                    "32 23 0:28 / /cg/cpuacct rw - cgroup cgroup rw,cpuacct\n")
    assert Hierarchies.find(info) == Hierarchies(Path("/cg/cpu"), False,
                                                 Path("/cg/cpuacct"), False)
    info.write_text("33 23 0:29 / /cg/memory rw - cgroup cgroup rw,memory\n")
    assert "no cgroup file system with the cpu controller" in str(Hierarchies.find(info))


def test_without_cgroups_the_sandbox_runs_unthrottled_warns_once_and_still_measures_cpu(
    make_sandbox: MakeSandbox, burn_function: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    no_cgroups = tmp_path / "mountinfo"
    no_cgroups.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    monkeypatch.setattr(cgroup, "_MOUNTINFO", no_cgroups)
    monkeypatch.setattr(cgroup, "_warned", threading.Event())
    first = make_sandbox(function=burn_function, handler="burn.handler", memory_mb=256)
    second = make_sandbox(function=burn_function, handler="burn.handler", memory_mb=256)

    busy = first.invoke({"cpu_ms": 200})
    assert second.invoke({}).status == "success"

    assert busy.status == "success"
    assert busy.cpu_quota_vcpus is None
    assert first.cgroup is None
    assert report_fields(first, busy.request_id)["CPU Quota"] == "none"
    assert busy.cpu_runtime_ms >= 180  # from /proc: clock ticks, 10 ms coarse
    warnings = capsys.readouterr().err.count("WARNING: no CPU quota")
    assert warnings == 1
