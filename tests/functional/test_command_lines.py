"""The command lines a user types: no tracebacks, usage for bad input, --help builds nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kafka_relay
from devtools.demo import logs_command

REPO = Path(__file__).resolve().parents[2]
NO_AWS = {
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def run(*command: str, env: dict[str, str] | None = None, shell: bool = False,
        cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base["PYTHONPATH"] = f"{REPO}:{REPO / 'extension'}"
    return subprocess.run(command[0] if shell else command, capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**base, **(env or {})}, shell=shell,
                          check=False)


def test_an_unknown_build_command_is_named_with_the_usage() -> None:
    result = run("./build.sh", "frobnicate")

    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown command frobnicate\nusage: ./build.sh")


@pytest.mark.parametrize("command", ["publish-layer", "demo", "sandbox", "teardown", "deploy"])
def test_help_prints_the_usage_and_builds_nothing(command: str, tmp_path: Path) -> None:
    result = run("./build.sh", command, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    assert "built kafka-relay-layer" not in result.stdout + result.stderr
    assert "installing" not in result.stdout


def test_teardown_without_a_region_exits_2_naming_the_fix() -> None:
    # From the checkout's root like the README says: layer_build needs no PYTHONPATH.
    result = run(sys.executable, "-m", "layer_build.teardown", env={**NO_AWS, "PYTHONPATH": ""})

    assert result.returncode == 2
    assert result.stderr == ("error: no AWS region: pass --region, or set AWS_DEFAULT_REGION "
                             "(or a profile's region)\n")


def test_logs_for_a_log_group_without_a_region_exits_2_without_a_traceback() -> None:
    result = run(sys.executable, "-m", "kafka_relay.tools.logs", "--log-group", "/aws/lambda/x",
                 env=NO_AWS)

    assert result.returncode == 2
    assert result.stderr.startswith("error: no AWS region")
    assert "Traceback" not in result.stderr


def test_logs_piped_into_head_exits_quietly(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("w") as stream:
        for n in range(5000):
            stream.write(f"START RequestId: r{n} Version: $LATEST\nEND RequestId: r{n}\n"
                         f"REPORT RequestId: r{n}\tDuration: 1.00 ms\tBilled Duration: 1 ms\t"
                         "Memory Size: 128 MB\tMax Memory Used: 50 MB\n")

    result = run(f"{sys.executable} -m kafka_relay.tools.logs --file {log} | head -n 1", shell=True)

    assert result.stdout.split()[:2] == ["REQUEST", "ID"]
    assert result.stderr == ""



def test_the_logs_command_the_demo_prints_runs_as_printed_elsewhere(tmp_path: Path) -> None:
    log = tmp_path / "my function.log"
    log.write_text("START RequestId: r1 Version: $LATEST\nEND RequestId: r1\n"
                   "REPORT RequestId: r1\tDuration: 1.00 ms\tBilled Duration: 1 ms\t"
                   "Memory Size: 128 MB\tMax Memory Used: 50 MB\n")

    result = subprocess.run(logs_command(log), shell=True, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, check=False,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.split()[:2] == ["REQUEST", "ID"]
    assert "r1" in result.stdout

@pytest.mark.parametrize("module", ["kafka_relay.tools.logs", "kafka_relay.tools.replay",
                                    "layer_build.deploy", "layer_build.publish"])
def test_bad_arguments_get_the_usage(module: str) -> None:
    result = run(sys.executable, "-m", module, "--no-such-option")

    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


# -- every command: a closed pipe, --help without .venv, a missing region, the caller's paths --

#: Each CLI module (and the console scripts' modules) with the arguments it is asked for.
CLI_MODULES = ["layer_build.build", "layer_build.publish", "layer_build.deploy",
               "layer_build.teardown", "devtools.sandbox", "devtools.demo", "bench",
               "kafka_relay.tools.logs", "kafka_relay.tools.replay", "kafka_relay"]
BUILD_COMMANDS = ["demo", "sandbox", "test", "build", "publish-layer", "deploy", "teardown",
                  "bench", "faults", "lock"]


def _with_stdout_closed(*command: str, env: dict[str, str] | None = None,
                        cwd: Path = REPO) -> tuple[int, str]:
    """Run with stdout a pipe nobody reads (``| head`` after head left): (status, stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base["PYTHONPATH"] = f"{REPO}:{REPO / 'extension'}"
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True,
                              timeout=120, cwd=cwd, env={**base, **(env or {})}, check=False)
    finally:
        os.close(writer)
    return done.returncode, done.stderr


@pytest.mark.parametrize("module", CLI_MODULES)
def test_a_closed_pipe_ends_each_cli_quietly(module: str) -> None:
    status, stderr = _with_stdout_closed(sys.executable, "-m", module, "--help")

    assert stderr == ""
    assert status == 0


@pytest.mark.parametrize("command", BUILD_COMMANDS)
def test_a_closed_pipe_ends_each_build_command_quietly(command: str, tmp_path: Path) -> None:
    _, stderr = _with_stdout_closed("./build.sh", command, "--help",
                                    env={"KAFKA_RELAY_VENV": str(tmp_path / "venv")})

    assert "Traceback" not in stderr
    assert "Broken pipe" not in stderr


@pytest.mark.parametrize("command", BUILD_COMMANDS)
def test_help_before_any_venv_exists_installs_builds_and_writes_nothing(
    command: str, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"  # as on a fresh clone: no environment yet
    constraints = (REPO / "constraints.txt").read_bytes()
    local = REPO / "build" / "local" / "inputs.sha256"
    local_before = local.read_bytes() if local.is_file() else None

    result = run("./build.sh", command, "--help", env={"KAFKA_RELAY_VENV": str(venv)})

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    assert "Traceback" not in result.stderr
    assert not venv.exists(), "--help created an environment"
    assert "installing" not in result.stdout
    assert (REPO / "constraints.txt").read_bytes() == constraints
    assert (local.read_bytes() if local.is_file() else None) == local_before


@pytest.mark.parametrize("command", [("publish-layer", "--dry-run"), ("deploy", "--dry-run"),
                                     ("teardown", "--dry-run"), ("publish-layer",)])
def test_a_missing_region_is_one_line_before_anything_is_installed_or_built(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"

    result = run("./build.sh", *command, env={**NO_AWS, "KAFKA_RELAY_VENV": str(venv),
                                              "HOME": str(tmp_path)})

    assert result.returncode == 2
    assert result.stderr == ("error: no AWS region: pass --region, or set AWS_DEFAULT_REGION "
                             "(or a profile's region)\n")
    assert result.stdout == ""
    assert not venv.exists()


def test_a_profiles_region_counts_as_a_region(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile work]\nregion = eu-west-1\n")

    found = run(sys.executable, "-m", "layer_build.region", "--dry-run",
                env={"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "work"})
    missing = run(sys.executable, "-m", "layer_build.region",
                  env={"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "other"})

    assert (found.returncode, found.stderr) == (0, "")
    assert missing.returncode == 2


def test_a_missing_event_file_is_one_line_naming_it_relative_to_the_caller(
    tmp_path: Path,
) -> None:
    result = run(sys.executable, "-m", "devtools.sandbox", "--function", ".", "--handler",
                 "app.handler", "--event", "@event.json", cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "python -m devtools.sandbox: error: argument --event: cannot read event.json "
        f"(No such file or directory; relative to {tmp_path})")


def test_the_sandbox_reads_the_function_and_event_where_the_caller_stands(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text("def handler(event, context):\n    return event\n")
    (tmp_path / "event.json").write_text('{"from": "the caller"}')

    result = run(sys.executable, "-m", "devtools.sandbox", "--function", ".", "--handler",
                 "app.handler", "--event", "@event.json", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first["payload"] == {"from": "the caller"}
    assert "records: no kafka-relay shutdown.summary in the log" in result.stdout


def test_kafka_relay_prints_its_version_and_help_without_registering() -> None:
    version = run(sys.executable, "-m", "kafka_relay", "--version")
    usage = run(sys.executable, "-m", "kafka_relay", "--help")

    assert version.stdout == f"kafka-relay {kafka_relay.__version__}\n"
    assert usage.stdout.startswith("usage: python -m kafka_relay ")
    assert version.returncode == usage.returncode == 0
    assert version.stderr == usage.stderr == ""
