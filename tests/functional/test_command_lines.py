"""The command lines a user types: no tracebacks, usage for bad input, --help builds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("module", ["kafka_relay.tools.logs", "kafka_relay.tools.replay",
                                    "layer_build.deploy", "layer_build.publish"])
def test_bad_arguments_get_the_usage(module: str) -> None:
    result = run(sys.executable, "-m", module, "--no-such-option")

    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr
