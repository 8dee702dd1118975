"""``pip install kafka-relay``: the client installs stdlib-only, typed, with the CLIs as scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kafka_relay

REPO = Path(__file__).resolve().parents[2]


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd,
                          check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (a build writes egg-info next to them)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "extension" / "kafka_relay", source / "extension" / "kafka_relay",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheels")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out),
                str(source))
    assert built.returncode == 0, built.stdout + built.stderr
    [found] = out.glob("kafka_relay-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
               "--target", str(target), str(wheel))
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def bare_python(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    """This interpreter without site-packages (-I -S): stdlib plus the installed wheel only."""
    return run(sys.executable, "-I", "-S", "-c",
               f"import sys; sys.path.insert(0, {str(site)!r})\n{code}")


def test_the_wheel_carries_the_typed_package_and_the_console_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
        [metadata] = [n for n in names if n.endswith("METADATA")]
        requires = [line for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]

    assert {"kafka_relay/client.py", "kafka_relay/protocol.py", "kafka_relay/__init__.py",
            "kafka_relay/py.typed"} <= names
    assert not any(name.startswith(("devtools/", "tests/", "layer_build/")) for name in names)
    assert "kafka-relay-logs = kafka_relay.tools.logs:cli" in scripts
    assert "kafka-relay-replay = kafka_relay.tools.replay:cli" in scripts
    assert requires, "the extras name their dependencies"
    assert all("extra ==" in line for line in requires), "no dependency outside the extras"


def test_the_client_imports_with_nothing_but_the_standard_library(installed: Path) -> None:
    result = bare_python(installed, (
        "import kafka_relay.client, kafka_relay.protocol\n"
        "assert kafka_relay.client.__file__.startswith(sys.path[0]), kafka_relay.client.__file__\n"
        "try:\n    import confluent_kafka\nexcept ModuleNotFoundError:\n    print('no kafka')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('boto', 'confluent'))))"
    ))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["no kafka", "[]"]


def console_script(site: Path, module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A console script (``module:cli``) run as installed, with these arguments."""
    return bare_python(site, f"sys.argv = {['kafka-relay', *argv]!r}\n"
                             f"from {module} import cli\nraise SystemExit(cli())")


def test_replay_without_its_extra_says_what_to_install(installed: Path) -> None:
    result = console_script(installed, "kafka_relay.tools.replay", "s3://bucket/prefix/")

    assert result.returncode == 2
    assert result.stderr == ("error: replay needs confluent_kafka: "
                             "pip install 'kafka-relay[replay]'\n")


def test_replay_help_without_its_extra_prints_the_usage_and_what_to_install(
    installed: Path,
) -> None:
    result = console_script(installed, "kafka_relay.tools.replay", "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: kafka-relay-replay ")
    assert "pip install 'kafka-relay[replay]'" in result.stdout


def test_logs_from_cloudwatch_without_its_extra_is_one_line_naming_the_install(
    installed: Path,
) -> None:
    result = console_script(installed, "kafka_relay.tools.logs", "--log-group", "/aws/lambda/f",
                            "--region", "eu-west-1")

    assert result.returncode == 2
    assert result.stderr == ("error: this needs boto3, which kafka-relay installs with its "
                             "extra: pip install 'kafka-relay[logs]'\n")


def test_the_version_is_the_packages_own(wheel: Path, installed: Path) -> None:
    result = bare_python(installed, "import runpy; sys.argv = ['kafka_relay', '--version']\n"
                                    "runpy.run_module('kafka_relay', run_name='__main__')")

    assert wheel.name.startswith(f"kafka_relay-{kafka_relay.__version__}-")
    assert result.stdout == f"kafka-relay {kafka_relay.__version__}\n"
    assert (REPO / "CHANGELOG.md").read_text().count(f"## [{kafka_relay.__version__}]") == 1


def test_the_logs_script_reads_a_sandbox_log_without_pythonpath(
    installed: Path, tmp_path: Path
) -> None:
    log = tmp_path / "sandbox.log"
    log.write_text("START RequestId: r1 Version: $LATEST\nEND RequestId: r1\n"
                   "REPORT RequestId: r1\tDuration: 2.00 ms\tBilled Duration: 2 ms\t"
                   "Memory Size: 128 MB\tMax Memory Used: 50 MB\n")

    result = bare_python(installed, (
        f"sys.argv = ['kafka-relay-logs', '--file', {str(log)!r}]\n"
        "from kafka_relay.tools.logs import cli\nraise SystemExit(cli())"
    ))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "r1"
    assert (installed / "bin" / "kafka-relay-logs").is_file()


def test_the_checkout_installs_editable_into_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    created = run(sys.executable, "-m", "venv", str(venv))
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"

    done = run(str(python), "-m", "pip", "install", "--no-deps", "-e", str(REPO))
    found = run(str(python), "-c",
                "import kafka_relay.tools.logs as m; print(m.__file__)", cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert found.stdout.strip() == str(REPO / "extension" / "kafka_relay" / "tools" / "logs.py")
    assert (venv / "bin" / "kafka-relay-logs").is_file()
