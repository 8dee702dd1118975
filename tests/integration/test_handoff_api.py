"""The handoff API on a real broker: what goes in arrives intact; bad requests accept nothing."""

from __future__ import annotations

import base64
import http.client
import json
import time
from pathlib import Path

import pytest

from devtools.kafka_broker import free_port
from kafka_relay.client import RecordRejected, RelayBusy, RelayClient, RelayUnavailable
from kafka_relay.config import FlushStrategy
from kafka_relay.record import Record
from tests.conftest import Broker
from tests.relay_harness import TOKEN, Harness, running_relay


def _deadline(ms: int = 5000) -> int:
    return int(time.time() * 1000) + ms


def _raw(h: Harness, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", h.config.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), json.loads(data or b"{}")
    finally:
        conn.close()


def test_records_arrive_with_topic_key_value_headers_and_relay_id(
    broker: Broker, tmp_path: Path
) -> None:
    default, other = broker.create_topic(), broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=default) as h:
        result = h.client.send([
            {"key": "a", "value": {"n": 1}, "headers": {"source": "rss"},
             "timestamp_ms": 1_700_000_000_000},
            {"key": None, "topic": other, "value_b64": base64.b64encode(b"\x00\x01").decode()},
        ])
        assert result.accepted == 2
        flushed = h.client.flush()
        assert flushed["remaining"] == 0
    (first,) = broker.read(default, expected=1)
    assert (first.key, first.value, first.timestamp_ms) == (b"a", b'{"n":1}', 1_700_000_000_000)
    assert first.headers == {"source": b"rss", "x-relay-id": result.ids[0].encode()}
    (second,) = broker.read(other, expected=1)
    assert (second.key, second.value) == (None, b"\x00\x01")
    assert second.headers["x-relay-id"] == result.ids[1].encode()


def test_one_producer_serves_many_invocations(broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    # 'end': every invocation waits for its record (auto would stop waiting after warm-up)
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                       env_extra={"KAFKA_RELAY_FLUSH": "end"}) as h:
        producer = h.parts.engine.pump.producer
        for n in range(20):
            request_id = f"req-{n}"
            h.client.request_id = request_id
            h.client.send([{"key": f"k{n}", "value": n}])
            h.client.invocation_end()
            h.loop.invoke({"requestId": request_id, "deadlineMs": _deadline()})
            assert h.parts.engine.pump.producer is producer
        assert h.parts.engine.gauge().counts["producers_built"] == 1
        assert h.parts.engine.gauge().counts["delivered"] == 20
    records = broker.read(topic, expected=20)
    assert sorted(int(r.value or b"-1") for r in records) == list(range(20))


def test_wait_delivered_returns_per_record_outcomes(broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        result = h.client.send([{"key": str(i), "value": i} for i in range(5)], wait=True)
    assert result.outcomes is not None
    assert [o["id"] for o in result.outcomes] == result.ids
    assert result.count("delivered") == 5


def test_a_broker_rejected_record_is_dead_lettered_with_headers_and_the_rest_delivered(
    broker: Broker, tmp_path: Path
) -> None:
    # Validation now refuses the topic ".." (see test_handoff_schema); the broker refuses it
    # too, so handing it to the engine directly stands for any record the broker rejects.
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                       dlq_topic=f"dlq.{topic}") as h:
        relay = h.parts.engine
        records = [Record(id=f"r{i}", topic=t, key=k.encode(), value=str(i).encode(),
                          request_id="req-dlq")
                   for i, (t, k) in enumerate([(topic, "good"), ("..", "bad"),
                                               (topic, "good2")])]
        watch = relay.accept(records, watch=True)
        assert watch is not None
        outcomes = watch.wait(20)
    assert [o["outcome"] for o in outcomes] == ["delivered", "dead_lettered", "delivered"]
    assert {r.key for r in broker.read(topic, expected=2)} == {b"good", b"good2"}
    (dead,) = broker.read(f"dlq.{topic}", expected=1)
    assert dead.value == b"1"
    assert dead.headers["x-relay-id"] == b"r1"
    assert dead.headers["x-relay-original-topic"] == b".."
    # The broker refuses the name in the produce answer or already in the metadata answer.
    assert dead.headers["x-relay-error"].split(b":")[0] in (b"TOPIC_EXCEPTION", b"_UNKNOWN_TOPIC")
    assert dead.headers["x-relay-attempts"] == b"1"
    assert dead.headers["x-relay-request-id"] == b"req-dlq"
    assert int(dead.headers["x-relay-first-failed-ms"]) > 0


def test_an_oversize_record_is_spilled_with_a_pointer_in_the_dlq(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        result = h.client.send([{"key": "big", "value": "x" * 1_200_000},
                                {"key": "small", "value": 1}], wait=True)
        assert result.outcomes is not None
        assert [o["outcome"] for o in result.outcomes] == ["spilled", "delivered"]
        spill_lines = [line for line in h.log_lines()
                       if "KAFKA_RELAY_SPILL" in line]
    assert spill_lines, "the oversize record must be recoverable from the spill"
    (pointer,) = broker.read(f"dlq.{topic}", expected=1)
    assert json.loads(pointer.value or b"{}")["id"] == result.ids[0]
    assert pointer.headers["x-relay-error"].startswith(b"MSG_SIZE_TOO_LARGE")


@pytest.mark.parametrize(
    ("headers", "what"), [({}, "missing"), ({"X-Kafka-Relay-Token": "nope"}, "wrong")]
)
def test_missing_or_wrong_token_is_401_and_accepts_nothing(
    broker: Broker, tmp_path: Path, headers: dict[str, str], what: str
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        body = json.dumps({"records": [{"key": "k", "value": 1}]}).encode()
        status, _, reply = _raw(h, "POST", "/v1/records", body,
                                {**headers, "Content-Type": "application/json"})
        assert status == 401
        assert what in str(reply["error"])
        assert h.parts.engine.gauge().counts["accepted"] == 0


def test_malformed_json_is_400_with_reasons_and_accepts_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        status, _, reply = _raw(h, "POST", "/v1/records", b'{"records": [',
                                {"X-Kafka-Relay-Token": TOKEN, "Content-Type": "application/json"})
        assert status == 400
        assert reply["reasons"]
        with pytest.raises(RecordRejected) as caught:
            h.client.send([{"key": "ok", "value": 1}, {"key": 1, "value": 2}])
        assert caught.value.reasons[0]["index"] == 1
        assert h.parts.engine.gauge().counts["accepted"] == 0


def test_a_body_over_the_limit_is_413_and_accepts_nothing(broker: Broker, tmp_path: Path) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t", max_body_bytes=1000) as h:
        body = json.dumps({"records": [{"key": "k", "value": "x" * 2000}]}).encode()
        status, _, reply = _raw(h, "POST", "/v1/records", body,
                                {"X-Kafka-Relay-Token": TOKEN, "Content-Type": "application/json"})
        assert status == 413
        assert "KAFKA_RELAY_MAX_BODY_BYTES" in str(reply["error"])
        assert h.parts.engine.gauge().counts["accepted"] == 0


def test_a_full_buffer_is_429_with_retry_after_and_the_client_gives_up_clearly(
    tmp_path: Path,
) -> None:
    # No broker listens there, so the three accepted records stay pending.
    unreachable = f"127.0.0.1:{free_port()}"
    # Without the outage spool (KAFKA_RELAY_SPOOL_MAX_BYTES=0): with it, the batch would wait
    # on disk instead (test_outage_spool.py).
    with running_relay(unreachable, tmp_path, default_topic="t", max_buffer_records=3,
                       init_probe_ms=100, flush=FlushStrategy.parse("shutdown"),
                       spool_max_bytes=0) as h:
        h.client.send([{"key": str(i), "value": i} for i in range(3)])
        body = json.dumps({"records": [{"key": "k", "value": 1}]}).encode()
        status, headers, reply = _raw(h, "POST", "/v1/records", body,
                                      {"X-Kafka-Relay-Token": TOKEN})
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert "KAFKA_RELAY_MAX_BUFFER_RECORDS" in str(reply["error"])
        busy = RelayClient(env={}, port=h.config.port, token=TOKEN, timeout_s=3.0)
        with pytest.raises(RelayBusy, match="NOT accepted"):
            busy.send([{"key": "late", "value": 1}])
        assert h.parts.engine.gauge().counts["accepted"] == 3


def test_status_reports_version_counts_and_broker_state(broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        h.client.send([{"key": "k", "value": 1}], wait=True)
        status = h.client.status()
    assert status["version"]
    assert status["counts"]["accepted"] == 1
    assert status["counts"]["delivered"] == 1
    assert status["broker_state"] == "up"
    assert status["pending"] == 0


def test_no_extension_listening_raises_relay_unavailable_naming_the_layer() -> None:
    client = RelayClient(env={}, port=free_port(), token="t")
    with pytest.raises(RelayUnavailable, match="attach the kafka-relay layer"):
        client.send([{"key": "k", "value": 1}])
