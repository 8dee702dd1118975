"""An on-call drill with the built layer: an outage, oversize records, a spill bucket created
late and SHUTDOWN with the broker down; then the logs table read from a CloudWatch log group
(moto), replay and DLQ redrive, each run twice. Every row equals what its invocation sent,
the totals equal ``shutdown.summary``, the second runs duplicate nothing, nothing is lost."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import free_port
from devtools.moto_server import MotoServer
from devtools.sandbox import Sandbox
from kafka_relay.tools import logs, replayer
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts, ProxiedBroker

REPO = Path(__file__).resolve().parents[2]
FUNCTION = REPO / "tests" / "fixtures" / "any_function"
FUNCTION_NAME = "drill-producer"
BUCKET = "drill-spill"
GROUP = f"/aws/lambda/{FUNCTION_NAME}"


def _records(run: str, count: int, *, oversize: bool = False) -> list[dict[str, Any]]:
    records = [{"key": f"{run}-{i}", "value": {"run": run, "i": i}} for i in range(count)]
    if oversize:
        # Over librdkafka's 1,000,000-byte message.max.bytes, within what a 256 MB function
        # with a spill bucket holds in memory (a batch over that is refused with 413).
        records.append({"key": f"{run}-big", "value": "x" * 1_020_000})
    return records


def _to_cloudwatch(moto: MotoServer, lines: list[str]) -> None:
    """The sandbox's log stream as Lambda would have written it to the function's group."""
    client = moto.client("logs")
    client.create_log_group(logGroupName=GROUP)
    stream = "2026/01/02/[$LATEST]drill"
    client.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    start = int(time.time() * 1000) - 600_000
    batch: list[dict[str, Any]] = []
    size = 0
    for n, line in enumerate(lines):
        if batch and (len(batch) >= 500 or size + len(line) > 800_000):
            client.put_log_events(logGroupName=GROUP, logStreamName=stream, logEvents=batch)
            batch, size = [], 0
        batch.append({"timestamp": start + n, "message": line})
        size += len(line) + 26
    client.put_log_events(logGroupName=GROUP, logStreamName=stream, logEvents=batch)


def _cli(main: Any, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env=env, stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


def test_an_on_call_drill_adds_up_and_replays_and_redrives_once(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, moto: MotoServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moto.reset()
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    dlq = broker.create_topic(f"dlq.{topic}")
    env = {"KAFKA_BOOTSTRAP_SERVERS": proxy.address, "KAFKA_TOPIC": topic,
           "KAFKA_RELAY_PORT": str(free_port()), "KAFKA_DLQ_TOPIC": dlq,
           "KAFKA_RELAY_SPILL_BUCKET": BUCKET, "KAFKA_RELAY_FLUSH_BUDGET_MS": "1500",
           "KAFKA_RELAY_MAX_ATTEMPTS": "1", "KAFKA_RELAY_RETRY_BACKOFF_MS": "100",
           "KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS": "1000",
           "KAFKA_PRODUCER_RECONNECT_BACKOFF_MAX_MS": "200", **moto.env()}
    sent: dict[str, int] = {}  # request id -> records handed over
    ids: list[str] = []
    sandbox = Sandbox(layers=[artifacts.layer], function=FUNCTION,
                      handler="any_producer.handler_relaying_event_records", env=env,
                      function_name=FUNCTION_NAME, timeout_s=10.0)
    with sandbox:
        def invoke(run: str, count: int, *, oversize: bool = False) -> None:
            result = sandbox.invoke({"records": _records(run, count, oversize=oversize)})
            assert result.status == "success", result.error
            assert "ids" in result.payload, result.payload
            sent[result.request_id] = len(result.payload["ids"])
            ids.extend(result.payload["ids"])

        for n in range(5):  # the broker is up; one record too large for Kafka
            invoke(f"up{n}", 4, oversize=n == 2)
        proxy.cut()
        for n in range(8):  # an outage: retries run out, the DLQ is down too
            invoke(f"out{n}", 4)
        moto.client("s3").create_bucket(Bucket=BUCKET)  # the spill bucket, created late
        proxy.restore()
        for n in range(8):  # back: the spool comes back and goes to the DLQ
            invoke(f"back{n}", 4)
        proxy.cut()
        for n in range(3):  # down again through SHUTDOWN
            invoke(f"end{n}", 4, oversize=n == 1)
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert shutdown.exit_codes == {"kafka-relay": 0}
    proxy.restore()
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["accepted"], summary["pending"], summary["unaccounted"]) == (
        len(ids), 0, 0)

    # -- the logs table, read from the log group ------------------------------------------
    _to_cloudwatch(moto, lines)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint_url)
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    code, out = _cli(logs.main, ["--log-group", GROUP, "--since", "1h", "--json"], moto.env())
    assert code == 0, out
    table = json.loads(out)
    assert table["checks"] == []
    rows = {row["request_id"]: row for row in table["invocations"]}
    assert set(rows) == set(sent)
    for request_id, count in sent.items():
        counts = rows[request_id]["counts"]
        assert counts["accepted"] == count, request_id
        ended = sum(counts.get(k, 0) for k in ("delivered", "dead_lettered", "spilled"))
        assert (ended, rows[request_id]["pending"]) == (count, 0), request_id
    for name in ("accepted", "delivered", "dead_lettered", "spilled", "spooled", "restored"):
        assert table["totals"][name] == summary[name], name
    places = table["spill"]["places"]
    assert sum(places.values()) == summary["spilled"]

    # -- replay, twice ----------------------------------------------------------------------
    home = {**moto.env(), "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "HOME": str(tmp_path)}
    sources = [[f"s3://{BUCKET}/kafka-relay/{FUNCTION_NAME}/"], ["--log-group", GROUP]]
    firsts = [_cli(replayer.main, source, home) for source in sources]
    seconds = [_cli(replayer.main, source, home) for source in sources]
    for _, out in [*firsts, *seconds]:
        failures = [line for line in out.splitlines() if line.startswith("  failed: ")]
        # Only a record too large for Kafka fails, and it says which setting to raise.
        assert all("KAFKA_PRODUCER_MESSAGE_MAX_BYTES" in line for line in failures), out
    for _, out in seconds:
        assert "produced 0, failed" in out, out

    # -- the DLQ redrive of what went there in the outage, twice ----------------------------
    redrive = ["--from-topic", dlq, "--bootstrap", broker.bootstrap, "--error-kind",
               "transient"]
    code, first = _cli(replayer.main, redrive, {})
    code2, second = _cli(replayer.main, redrive, {})
    assert (code, code2) == (0, 0), first + second
    assert "produced 0, failed 0" in second

    # -- nothing lost, nothing duplicated by the tools ---------------------------------------
    on_topic = Counter(r.headers["x-relay-id"].decode() for r in broker.read(topic, timeout=30))
    big = {i for i in ids if i not in on_topic}
    assert len(big) == 2, "only the two records too large for Kafka are not on the topic"
    # Each has a DLQ pointer naming where it is, or (the DLQ down) an error line that does.
    pointers = {r.headers["x-relay-id"].decode(): r.headers["x-relay-spilled-to"].decode()
                for r in broker.read(dlq, timeout=10) if "x-relay-spilled-to" in r.headers}
    failed = {e["id"]: e["spilled_to"] for e in events_named(lines, "dead_letter.pointer_failed")}
    assert set(pointers) | set(failed) == big
    assert all(where.startswith(("s3://", "KAFKA_RELAY_SPILL log lines of "))
               for where in [*pointers.values(), *failed.values()])
    redriven = first.split("produced ")[1].split(",")[0]
    replayed = sum(int(out.split("produced ")[1].split(",")[0]) for _, out in firsts)
    print(f"\ndrill: {len(sent)} invocations, {len(ids)} records; shutdown.summary "
          f"{ {k: summary[k] for k in ('delivered', 'dead_lettered', 'spilled', 'spooled')} }; "
          f"replayed {replayed}, redriven {redriven}; spilled places {places}; "
          f"on topic more than once: {sum(1 for c in on_topic.values() if c > 1)}")
