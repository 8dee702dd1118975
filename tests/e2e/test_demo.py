"""./build.sh demo's program: the whole job locally; one clear line for an unreachable cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from devtools import demo
from devtools.kafka_broker import free_port
from tests.conftest import Artifacts


def test_the_demo_delivers_everything_and_keeps_each_full_log(
    artifacts: Artifacts, views_functions: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = demo.main(["--layer", str(artifacts.layer), "--functions", str(artifacts.functions),
                      "--views-functions", str(views_functions),
                      "--log-dir", str(tmp_path), "--invocations", "2"], env={})

    out = capsys.readouterr().out
    assert code == 0, out
    logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}
    assert set(logs) == {"rss-producer.log", "polymarket-producer.log"}
    assert all('"event": "shutdown.summary"' in text or '"event":"shutdown.summary"' in text
               for text in logs.values())
    assert out.count("REQUEST ID") == 2, "the logs CLI's table, once per function"
    assert f"Full logs: {tmp_path / 'rss-producer.log'}" in out
    rss_samples = out.split("rss.events:")[1].split("dlq.rss.events")[0].splitlines()[1:]
    keys = [line.split()[0] for line in rss_samples if line.strip().startswith("key=")]
    assert len(keys) == 3
    assert len(set(keys)) == 3, "samples show distinct keys"


def test_an_unreachable_cluster_is_one_line_naming_the_settings(
    artifacts: Artifacts, views_functions: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unreachable = f"127.0.0.1:{free_port()}"

    code = demo.main(["--layer", str(artifacts.layer), "--functions", str(artifacts.functions),
                      "--views-functions", str(views_functions),
                      "--log-dir", str(tmp_path), "--bootstrap", unreachable,
                      "--connect-timeout", "2"], env={})

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: cannot reach Kafka at {unreachable}: ")
    assert "--security-protocol" in err
    assert err.count("\n") == 1


def test_security_settings_come_from_options_else_the_environment() -> None:
    args = argparse.Namespace(security_protocol="SASL_SSL", sasl_mechanism=None, api_key="key",
                              api_secret=None)

    variables, client = demo.kafka_settings(
        args, {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_API_SECRET": "s3cret",
               "KAFKA_API_KEY": "ignored"})

    assert variables == {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN",
                         "KAFKA_API_KEY": "key", "KAFKA_API_SECRET": "s3cret"}
    assert client == {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                      "sasl.username": "key", "sasl.password": "s3cret"}
