"""The logs CLI and replay read CloudWatch Logs (moto in server mode) like a real log group."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.moto_server import MotoServer, use_moto
from kafka_relay.config import load_config
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillChain, SpillKind
from kafka_relay.tools import replayer
from kafka_relay.tools.logs import CloudWatchTail, main
from tests.conftest import Broker

REQ1 = "7d1e9f3a-0000-4000-8000-000000000001"
REQ2 = "7d1e9f3a-0000-4000-8000-000000000002"



@pytest.fixture
def logs(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A logs client; the CLIs' own boto3 clients reach the same moto through the environment."""
    use_moto(moto, monkeypatch)
    return boto3.client("logs")


@pytest.fixture
def log_group(logs: Any) -> str:
    group = f"/aws/lambda/rss-producer-{uuid.uuid4().hex[:8]}"
    logs.create_log_group(logGroupName=group)
    return group


class Stream:
    """One log stream the test writes sandbox-style lines to, one event per line."""

    def __init__(self, logs: Any, group: str) -> None:
        self._logs = logs
        self.group = group
        self.name = f"2026/01/01/[$LATEST]{uuid.uuid4().hex}"
        logs.create_log_stream(logGroupName=group, logStreamName=self.name)
        self.first_ms = int(time.time() * 1000) - 60_000
        self._next_ms = self.first_ms

    def put(self, lines: list[str]) -> None:
        events = []
        for line in lines:
            events.append({"timestamp": self._next_ms, "message": line})
            self._next_ms += 1
        self._logs.put_log_events(logGroupName=self.group, logStreamName=self.name,
                                  logEvents=events)


def _relay(event: str, level: str = "INFO", **fields: object) -> str:
    return json.dumps({"ts": time.time(), "level": level, "logger": "kafka-relay",
                       "event": event, **fields}, separators=(",", ":"))


def _invocation(request_id: str, *, cold: bool, accepted: int, delivered: int) -> list[str]:
    report = (f"REPORT RequestId: {request_id}\tDuration: 41.07 ms\tBilled Duration: 42 ms\t"
              "Memory Size: 256 MB\tMax Memory Used: 88 MB\t")
    return [
        f"START RequestId: {request_id} Version: $LATEST",
        _relay("records.outcomes", request_id=request_id, at="invocation",
               by_request={request_id: {"accepted": accepted, "delivered": delivered}}),
        _relay("invocation.done", request_id=request_id, accepted=accepted, delivered=delivered,
               dead_lettered=0, spilled=0, pending=accepted - delivered, flush_ms=6.5),
        json.dumps({"_aws": {"Timestamp": 1, "CloudWatchMetrics": []},
                    "RecordsAccepted": accepted, "RecordsDelivered": delivered}),
        f"END RequestId: {request_id}",
        report + ("Init Duration: 310.20 ms\t" if cold else ""),
    ]


def _shutdown_spill(topic: str, tmp_path: Path, count: int) -> tuple[list[Record], list[str]]:
    """What the extension writes when SHUTDOWN leaves records undelivered: real spill lines."""
    records = [Record(id=f"env9-{i:08x}", topic=topic, key=f"k{i}".encode(),
                      value=json.dumps({"n": i}).encode(), headers=(("h", b"v"),))
               for i in range(count)]
    out = io.StringIO()
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "unused:9092",
                          "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool")})
    spiller = SpillChain.from_config(config, JsonLogger(stream=out))
    spiller.final = True
    spilled = spiller.spill(records, reason="shutdown (spindown) before delivery")
    assert spilled.kind is SpillKind.LOG
    return records, [line for line in out.getvalue().splitlines() if line]


def _logs_cli(argv: list[str], **inject: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env={}, stdout=out, stderr=err, **inject)
    return code, out.getvalue(), err.getvalue()


def test_the_logs_cli_summarises_a_log_group_and_hands_spills_to_replay(
    logs: Any, log_group: str, broker: Broker, topic: str, tmp_path: Path
) -> None:
    stream = Stream(logs, log_group)
    records, spill_lines = _shutdown_spill(topic, tmp_path, 3)
    stream.put([
        *_invocation(REQ1, cold=True, accepted=5, delivered=4),
        *_invocation(REQ2, cold=False, accepted=2, delivered=0),
        *spill_lines,  # the spiller's own spill.log line and the KAFKA_RELAY_SPILL lines
        _relay("shutdown.summary", reason="spindown", accepted=7, delivered=4, spilled=3),
        _relay("records.outcomes", at="shutdown",
               by_request={REQ1: {"spilled": 1}, REQ2: {"spilled": 2}}),
        json.dumps({"_aws": {"Timestamp": 1, "CloudWatchMetrics": []}, "RecordsSpilled": 3}),
    ])
    spilled = tmp_path / "spilled.log"
    code, out, err = _logs_cli(["--log-group", log_group, "--start", str(stream.first_ms),
                                "--json", "--spilled-out", str(spilled)])
    assert code == 0, err
    summary = json.loads(out)
    rows = {row["request_id"]: row for row in summary["invocations"]}
    assert list(rows) == [REQ1, REQ2]
    assert (rows[REQ1]["cold_start"], rows[REQ1]["init_ms"], rows[REQ2]["cold_start"]) == (
        True, 310.2, False)
    assert rows[REQ1]["start_ms"] == stream.first_ms
    assert rows[REQ1]["counts"] == {"accepted": 5, "delivered": 4, "spilled": 1}
    assert rows[REQ2]["counts"] == {"accepted": 2, "delivered": 0, "spilled": 2}
    assert rows[REQ2]["max_memory_mb"] == 88
    assert summary["after_last_invocation"]["spilled"] == 3
    assert summary["checks"] == []
    assert [e["event"] for e in summary["events"]] == ["spill.log", "shutdown.summary"]
    # three small records share one packed KAFKA_RELAY_SPILL line
    assert (summary["spill"]["lines"], summary["spill"]["records"]) == (1, 3)
    assert summary["spill"]["places"] == {"KAFKA_RELAY_SPILL log lines": 3}
    assert summary["spill"]["replay"] == [f"kafka-relay-replay --log-file {spilled}"]

    out_replay, err_replay = io.StringIO(), io.StringIO()
    code = replayer.main(["--log-file", str(spilled), "--bootstrap", broker.bootstrap],
                       env={}, stdout=out_replay, stderr=err_replay)
    assert code == 0, out_replay.getvalue() + err_replay.getvalue()
    got = broker.read(topic, expected=3)
    assert sorted((r.headers["x-relay-id"].decode(), r.value) for r in got) == [
        (r.id, r.value) for r in records]


def test_replay_searches_a_log_group_for_spill_lines_in_a_time_range(
    logs: Any, log_group: str, broker: Broker, topic: str, tmp_path: Path
) -> None:
    stream = Stream(logs, log_group)
    records, spill_lines = _shutdown_spill(topic, tmp_path, 2)
    stream.put(_invocation(REQ1, cold=True, accepted=2, delivered=0) + spill_lines)
    out, err = io.StringIO(), io.StringIO()
    code = replayer.main(["--log-group", log_group, "--start", str(stream.first_ms),
                        "--bootstrap", broker.bootstrap], env={}, stdout=out, stderr=err)
    assert code == 0, out.getvalue() + err.getvalue()
    assert "produced 2, failed 0" in out.getvalue()
    got = broker.read(topic, expected=2)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == [r.id for r in records]


def test_the_replay_command_the_logs_cli_prints_replays_exactly_the_spilled_records(
    logs: Any, log_group: str, broker: Broker, topic: str, tmp_path: Path
) -> None:
    stream = Stream(logs, log_group)
    stream.put(_invocation(REQ1, cold=True, accepted=1, delivered=1))  # outside the range
    records, spill_lines = _shutdown_spill(topic, tmp_path, 2)
    stream.put(spill_lines)
    code, out, err = _logs_cli(["--log-group", log_group, "--since", str(stream.first_ms)])
    assert code == 0, err
    (command,) = [line.strip() for line in out.splitlines()
                  if line.strip().startswith("kafka-relay-replay ")]
    argv = command.split()[1:]
    assert argv[:2] == ["--log-group", log_group]

    out_replay, err_replay = io.StringIO(), io.StringIO()
    code = replayer.main([*argv, "--bootstrap", broker.bootstrap], env={}, stdout=out_replay,
                         stderr=err_replay)
    assert code == 0, out_replay.getvalue() + err_replay.getvalue()
    assert "produced 2, failed 0" in out_replay.getvalue()
    got = broker.read(topic, expected=2)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == [r.id for r in records]


def test_a_tail_pages_through_everything_once_and_then_returns_only_new_events(
    logs: Any, log_group: str
) -> None:
    stream = Stream(logs, log_group)
    stream.put([f"line {i}" for i in range(7)])
    tail = CloudWatchTail(logs, log_group, start_ms=stream.first_ms, page_size=2)
    assert [line.message for line in tail.poll()] == [f"line {i}" for i in range(7)]
    assert tail.poll() == []
    stream.put(["line 7", "line 8"])
    assert [line.message for line in tail.poll()] == ["line 7", "line 8"]


def test_following_a_log_group_prints_invocations_as_their_report_arrives(
    logs: Any, log_group: str
) -> None:
    stream = Stream(logs, log_group)
    stream.put(_invocation(REQ1, cold=True, accepted=1, delivered=1))
    later = [[*_invocation(REQ2, cold=False, accepted=4, delivered=4),
              _relay("flush.incomplete", "WARNING", request_id=REQ2, remaining=1)]]
    clock = iter(range(100))
    code, out, err = _logs_cli(
        ["--log-group", log_group, "--start", str(stream.first_ms), "--follow",
         "--follow-for", "3", "--json"],
        sleep=lambda _: stream.put(later.pop()) if later else None,
        monotonic=lambda: float(next(clock)),
    )
    assert code == 0, err
    items = [json.loads(line) for line in out.splitlines()]
    assert [(i["type"], i.get("request_id")) for i in items] == [
        ("invocation", REQ1), ("invocation", REQ2), ("event", REQ2)]
    assert items[1]["counts"] == {"accepted": 4, "delivered": 4}


def test_an_unknown_log_group_is_an_error_naming_it(logs: Any) -> None:
    code, _, err = _logs_cli(["--log-group", "/aws/lambda/absent"])
    assert code == 2
    assert "'/aws/lambda/absent'" in err
    assert "logs:FilterLogEvents" in err
