"""The framed handoff body against the real extension and broker: records arrive exactly as
through the JSON API, content types mix on one connection, hostile frames accept nothing."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from kafka_relay.client import RecordRejected, RelayClient
from kafka_relay.protocol import FRAMES_TYPE, encode_frames
from tests.conftest import Broker
from tests.relay_harness import TOKEN, Harness, running_relay


def _records(other_topic: str, tag: str) -> list[dict[str, Any]]:
    return [
        {"key": f"{tag}-a", "value": {"n": 1, "text": "é😀", "f": 0.1, "big": 2**70}},
        {"key": f"{tag}-b", "value": [None, True, "x" * 2000], "headers": {"h": "v", "é": ""},
         "timestamp_ms": 1_700_000_000_000},
        {"key": f"{tag}-c", "value": None},
        {"key": f"{tag}-d", "topic": other_topic,
         "value_b64": base64.b64encode(b"\x00\xff raw").decode()},
        {"key": f"{tag}-e", "value": "just a string"},
    ]


def _shape(broker: Broker, topic: str, count: int) -> dict[str, tuple[Any, ...]]:
    """key -> (value, headers without the relay id, timestamp if set by the caller)."""
    out = {}
    for r in broker.read(topic, expected=count):
        assert r.key is not None
        headers = {k: v for k, v in r.headers.items() if k != "x-relay-id"}
        stamp = r.timestamp_ms if r.timestamp_ms == 1_700_000_000_000 else None
        out[r.key.decode()] = (r.value, headers, stamp)
    return out


def test_framed_records_arrive_byte_identical_to_the_json_apis(
    broker: Broker, tmp_path: Path
) -> None:
    default, other = broker.create_topic(), broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=default) as h:
        plain = RelayClient(env={}, port=h.config.port, token=TOKEN, framed=False)
        try:
            framed_result = h.client.send(_records(other, "framed"))
            plain_result = plain.send(_records(other, "json"))
        finally:
            plain.close()
        assert (framed_result.accepted, plain_result.accepted) == (5, 5)
        assert h.client.flush()["remaining"] == 0
    on_default = _shape(broker, default, 8)
    on_other = _shape(broker, other, 2)
    framed = {k[len("framed-"):]: v for k, v in {**on_default, **on_other}.items()
              if k.startswith("framed-")}
    assert framed == {k[len("json-"):]: v for k, v in {**on_default, **on_other}.items()
                      if k.startswith("json-")}
    assert framed["a"][0] == json.dumps({"n": 1, "text": "é😀", "f": 0.1, "big": 2**70},
                                        ensure_ascii=False, separators=(",", ":")).encode()
    assert framed["b"][1:] == ({"h": b"v", "é": b""}, 1_700_000_000_000)
    assert (framed["c"][0], framed["d"][0]) == (None, b"\x00\xff raw")


def _post(conn: http.client.HTTPConnection, body: bytes, content_type: str,
          query: str = "") -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/v1/records" + query, body=body,
                 headers={"X-Kafka-Relay-Token": TOKEN, "Content-Type": content_type})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_framed_json_and_ndjson_bodies_mix_on_one_kept_alive_connection(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        conn = http.client.HTTPConnection("127.0.0.1", h.config.port, timeout=10)
        try:
            answers = [
                _post(conn, encode_frames([{"key": "f", "value": 1}]), FRAMES_TYPE),
                _post(conn, b'{"records": [{"key": "j", "value": 2}]}', "application/json"),
                _post(conn, b'{"key": "n", "value": 3}\n', "application/x-ndjson"),
                _post(conn, encode_frames([{"key": "w", "value": 4}]),
                      FRAMES_TYPE + "; charset=binary", "?wait=delivered&timeout_ms=5000"),
            ]
        finally:
            conn.close()
        assert [status for status, _ in answers] == [202, 202, 202, 200]
        assert answers[3][1]["outcomes"][0]["outcome"] == "delivered"
        assert h.client.flush()["remaining"] == 0
    values = {r.key: r.value for r in broker.read(topic, expected=4)}
    assert values == {b"f": b"1", b"j": b"2", b"n": b"3", b"w": b"4"}


def _hostile(h: Harness, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", h.config.port, timeout=10)
    try:
        return _post(conn, body, FRAMES_TYPE)
    finally:
        conn.close()


def test_hostile_frames_are_400_naming_record_and_problem_and_accept_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    good = encode_frames([{"key": "k", "value": i} for i in range(3)])
    with running_relay(broker.bootstrap, tmp_path, default_topic=broker.create_topic()) as h:
        cases = {
            "truncated": good[:-1],
            "trailing": good + b"\x00\x00",
            "absurd count": good[:4] + b"\xff\xff\xff\x7f" + good[8:],
            "json as frames": b'{"records": []}',
            "bad topic": encode_frames([{"value": 1}, {"topic": "no spaces", "value": 2}]),
            "reserved header": encode_frames([{"value": 1, "headers": {"x-relay-id": "x"}}]),
        }
        answers = {name: _hostile(h, body) for name, body in cases.items()}
        with pytest.raises(RecordRejected) as caught:  # refused before it is sent
            h.client.send([{"value": 1}, {"value": float("nan")}])
        with pytest.raises(RecordRejected) as every:  # one reason per bad record
            h.client.send([{"value": 1}, {"key": 1, "value": 2}, {"topic": "a b", "value": 3}])
        assert h.parts.engine.gauge().counts["accepted"] == 0
    assert {name: status for name, (status, _) in answers.items()} == dict.fromkeys(cases, 400)
    reasons = {name: reply["reasons"][0] for name, (_, reply) in answers.items()}
    assert reasons["truncated"]["index"] == 2
    assert "truncated" in reasons["truncated"]["reason"]
    assert "2 bytes after the last of the 3 records" in reasons["trailing"]["reason"]
    assert "announces" in reasons["absurd count"]["reason"]
    assert "not b'KRF\\x01'" in reasons["json as frames"]["reason"]
    assert (reasons["bad topic"]["index"], "not a valid Kafka topic" in
            reasons["bad topic"]["reason"]) == (1, True)
    assert "reserved prefix" in reasons["reserved header"]["reason"]
    assert caught.value.reasons == [{"index": 1, "reason": caught.value.reasons[0]["reason"]}]
    assert "NaN" in str(caught.value.reasons[0]["reason"])
    assert [r["index"] for r in every.value.reasons] == [1, 2]
