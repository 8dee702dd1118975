"""The built layer in the local Lambda sandbox: any function's records reach Kafka, none lost."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import free_port
from devtools.sandbox import Sandbox, SandboxInitError
from kafka_relay.tools import logs
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts, Broker

FUNCTION = Path(__file__).resolve().parent.parent / "fixtures" / "any_function"


def _sandbox(artifacts: Artifacts, broker: Broker, topic: str, tmp_path: Path,
             handler: str = "any_producer.handler", **env: str) -> Sandbox:
    return Sandbox(
        layers=[artifacts.layer], function=FUNCTION, handler=handler,
        env={"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_TOPIC": topic,
             "KAFKA_RELAY_PORT": str(free_port()), **env},
        function_name="any-producer", timeout_s=10.0,
    )


def _run(sandbox: Sandbox, invocations: int, count: int) -> Iterator[dict[str, Any]]:
    for n in range(invocations):
        result = sandbox.invoke({"run": f"run{n}", "count": count})
        assert result.status == "success", result.error
        assert isinstance(result.payload, dict)
        yield result.payload


@pytest.mark.parametrize("flush", ["end", "periodic:1000", "shutdown"])
def test_records_from_several_invocations_all_arrive_and_the_summary_matches(
    artifacts: Artifacts, broker: Broker, tmp_path: Path, flush: str
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker, topic, tmp_path, KAFKA_RELAY_FLUSH=flush) as sandbox:
        ids = [i for payload in _run(sandbox, 5, 20) for i in payload["ids"]]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert shutdown.killed == []
    assert shutdown.exit_codes == {"kafka-relay": 0}
    (summary,) = events_named(lines, "shutdown.summary")
    assert summary["reason"] == "spindown"
    assert (summary["accepted"], summary["delivered"], summary["unaccounted"]) == (100, 100, 0)
    assert summary["producers_built"] == 1
    got = broker.read(topic, expected=100)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(ids)
    assert {r.key for r in got} == {f"run{n}-{i}".encode() for n in range(5) for i in range(20)}


def test_end_flush_delivers_before_the_environment_freezes(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker, topic, tmp_path) as sandbox:
        list(_run(sandbox, 1, 10))
        # The environment is frozen now; the records must already be on the topic.
        assert len(broker.read(topic, expected=10, timeout=5)) == 10
        done = events_named(sandbox.log_lines(), "invocation.done")
        assert done[-1]["delivered"] == 10


def test_synchronous_mode_reports_delivered_outcomes(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker, topic, tmp_path) as sandbox:
        result = sandbox.invoke({"run": "sync", "count": 5, "wait": True})
    assert result.status == "success", result.error
    assert isinstance(result.payload, dict)
    assert [o["outcome"] for o in result.payload["outcomes"]] == ["delivered"] * 5


def test_telemetry_runtime_done_ends_the_invocation_without_a_client_call(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker, topic, tmp_path,
                  handler="any_producer.handler_without_end_call") as sandbox:
        list(_run(sandbox, 2, 10))
        assert len(broker.read(topic, expected=20, timeout=5)) == 20
        results = [sandbox.invoke({"run": "x", "count": 1}) for _ in range(2)]
    # Without runtimeDone the extension would hold each invocation to its deadline.
    assert all(r.billed_ms < r.deadline_ms - r.started_ms for r in results)


def test_records_accepted_before_a_function_timeout_are_still_delivered(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker, topic, tmp_path,
                  handler="any_producer.handler_that_times_out") as sandbox:
        sandbox_timeout = sandbox.invoke({"run": "late", "count": 25})
        lines = sandbox.log_lines()
    assert sandbox_timeout.status == "timeout"
    (summary,) = events_named(lines, "shutdown.summary")
    assert summary["reason"] == "timeout"
    assert summary["unaccounted"] == 0
    assert len({r.headers["x-relay-id"] for r in broker.read(topic, expected=25)}) == 25


def test_bad_configuration_fails_init_with_the_variable_named(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    sandbox = _sandbox(artifacts, broker, "t", tmp_path, KAFKA_RELAY_FLUSH="sometimes")
    with sandbox, pytest.raises(SandboxInitError) as caught:
        sandbox.start()
    assert caught.value.error_type == "Extension.ConfigError"
    assert "KAFKA_RELAY_FLUSH" in str(caught.value)


@pytest.mark.parametrize(("initialization", "before_assembly"),
                         [("on-demand", True), ("provisioned-concurrency", False)])
def test_on_demand_the_extension_is_ready_before_it_assembles_and_the_first_records_wait(
    artifacts: Artifacts, broker: Broker, tmp_path: Path, initialization: str,
    before_assembly: bool,
) -> None:
    """On demand the first /next goes out before the engine, the probe and the handoff server
    exist: the first invocation's records wait in the port's backlog and arrive all the same.
    Provisioned concurrency initializes ahead of its invocations: everything before /next."""
    topic = broker.create_topic()
    with _sandbox(artifacts, broker, topic, tmp_path,
                  AWS_LAMBDA_INITIALIZATION_TYPE=initialization) as sandbox:
        ids = [i for payload in _run(sandbox, 1, 20) for i in payload["ids"]]
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    (ready,) = events_named(lines, "init.ready")
    assert (ready["cpu_ms"] < ready["assembled_cpu_ms"]) is before_assembly
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["accepted"], summary["delivered"], summary["unaccounted"]) == (20, 20, 0)
    got = broker.read(topic, expected=20)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(ids)


def test_a_taken_handoff_port_fails_init_before_ready(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        sandbox = _sandbox(artifacts, broker, "t", tmp_path, KAFKA_RELAY_PORT=str(port))
        with sandbox, pytest.raises(SandboxInitError) as caught:
            sandbox.start()
    assert caught.value.error_type == "Extension.PortInUse"
    assert f"handoff port 127.0.0.1:{port} is already in use" in str(caught.value)
    assert "KAFKA_RELAY_PORT" in str(caught.value)


def test_the_logs_cli_summarises_a_sandbox_log_stream(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    # The default flush ('auto' may defer): rows count each invocation's own records anyway.
    with _sandbox(artifacts, broker, topic, tmp_path) as sandbox:
        list(_run(sandbox, 3, 7))
        sandbox.shutdown("spindown")
        log_path = sandbox.log_path
        out, err = io.StringIO(), io.StringIO()
        assert logs.main(["--file", str(log_path), "--json"], env={}, stdout=out,
                         stderr=err) == 0, err.getvalue()
    summary = json.loads(out.getvalue())
    rows = summary["invocations"]
    assert len(rows) == 3
    assert [row["cold_start"] for row in rows] == [True, False, False]
    assert all(row["billed_ms"] >= row["duration_ms"] for row in rows)
    assert [(row["counts"]["accepted"], row["counts"].get("delivered", 0)) for row in rows] \
        == [(7, 7)] * 3
    assert summary["totals"]["accepted"] == summary["totals"]["delivered"] == 21
    assert summary["checks"] == []
    assert any(e["event"] == "shutdown.summary" for e in summary["events"])
