"""Requests are validated whole: every bad record is named, nothing is half-accepted."""

from __future__ import annotations

import base64
import itertools
import json
import re

import pytest
from hypothesis import given, settings

from kafka_relay.config import valid_topic_name
from kafka_relay.handoff.schema import InvalidRequest, Reason, parse_body, validate
from kafka_relay.protocol import ID_HEADER
from kafka_relay.record import Record
from tests.record_strategies import bodies

_ids = itertools.count()


def _validate(items: list[object], default_topic: str | None = "events") -> list[Record]:
    return validate(items, default_topic=default_topic,
                    new_ids=lambda n: [f"id-{next(_ids)}" for _ in range(n)],
                    request_id="req-1", now_ms=123)


def test_json_and_ndjson_bodies_give_the_same_items() -> None:
    records = [{"key": "a", "value": {"x": 1}}, {"key": "b", "value": [1, 2]}]
    as_json = parse_body(json.dumps({"records": records}).encode(), "application/json")
    as_ndjson = parse_body("\n".join(json.dumps(r) for r in records).encode(),
                           "application/x-ndjson")
    assert as_json == as_ndjson == records


def test_values_become_utf8_json_and_value_b64_raw_bytes() -> None:
    raw = b"\x00\xffbinary"
    first, second = _validate([
        {"key": "k", "value": {"title": "café"}, "headers": {"source": "rss"},
         "timestamp_ms": 1700000000000},
        {"topic": "other", "key": None, "value_b64": base64.b64encode(raw).decode()},
    ])
    assert first.topic == "events"
    assert first.value == '{"title":"café"}'.encode()
    assert first.key == b"k"
    assert first.timestamp_ms == 1700000000000
    assert first.request_id == "req-1"
    assert dict(first.kafka_headers())["source"] == b"rss"
    assert dict(first.kafka_headers())[ID_HEADER] == first.id.encode()
    assert (second.topic, second.key, second.value) == ("other", None, raw)


def test_every_invalid_record_is_reported_with_its_index() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _validate([
            {"key": "ok", "value": 1},
            "not an object",
            {"key": 5, "value": 1},
            {"key": "k"},
            {"key": "k", "value": 1, "value_b64": "AA=="},
            {"key": "k", "value_b64": "***"},
            {"key": "k", "value": 1, "topic": "bad topic"},
            {"key": "k", "value": 1, "headers": {"a": 1}},
            {"key": "k", "value": 1, "headers": {"x-relay-id": "spoof"}},
            {"key": "k", "value": 1, "timestamp_ms": -1},
            {"key": "k", "value": 1, "colour": "red"},
        ])
    reasons = {r.index: r.reason for r in caught.value.reasons}
    assert sorted(reasons) == list(range(1, 11))
    assert "JSON object" in reasons[1]
    assert "'key'" in reasons[2]
    assert "exactly one" in reasons[3]
    assert "exactly one" in reasons[4]
    assert "base64" in reasons[5]
    assert "topic" in reasons[6]
    assert "headers" in reasons[7]
    assert "reserved" in reasons[8]
    assert "timestamp_ms" in reasons[9]
    assert "colour" in reasons[10]


def test_a_record_without_topic_needs_a_default_topic() -> None:
    with pytest.raises(InvalidRequest, match="KAFKA_TOPIC"):
        _validate([{"key": "k", "value": 1}], default_topic=None)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"rows": []}', "application/json", '{"records"'),
        (b'{"a":1}\n{oops', "application/x-ndjson", "line is not valid JSON"),
        (b"\xff\xfe", "application/json", "UTF-8"),
    ],
)
def test_malformed_bodies_are_rejected(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_body(body, content_type)


def test_an_empty_request_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="no records"):
        _validate([])


# -- accept only what the producer can take (issue 13) ------------------------------------


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"key": "k", "value": 1, "headers": {"\ud800": "v"}}, "'headers' name"),
        ({"key": "k", "value": 1, "headers": {"h": "\udfff"}}, "'headers' value"),
        ({"key": "\ud800", "value": 1}, "'key'"),
        ({"key": "k", "value": {"t": "a\ud800"}}, "'value'"),
        ({"key": "k", "value": 1, "topic": "x\n"}, "'topic'"),
        ({"key": "k", "value": 1, "topic": "."}, "'topic'"),
        ({"key": "k", "value": 1, "topic": ".."}, "'topic'"),
        ({"key": "k", "value": 1, "topic": "a" * 250}, "'topic'"),
        ({"key": "k", "value": 1, "timestamp_ms": 2**63}, "'timestamp_ms'"),
        ({"key": "k", "value": 1, "timestamp_ms": True}, "'timestamp_ms'"),
        ({"key": "k", "value": 1, "timestamp_ms": 1.5}, "'timestamp_ms'"),
        ({"key": "k", "value": float("inf")}, "'value'"),
    ],
)
def test_what_the_producer_cannot_take_is_rejected_naming_the_field(
    item: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _validate([item])
    (reason,) = caught.value.reasons
    assert field in reason.reason


def test_the_largest_kafka_timestamp_and_a_249_character_topic_are_accepted() -> None:
    (record,) = _validate([{"key": "k", "value": 1, "topic": "a" * 249,
                            "timestamp_ms": 2**63 - 1}])
    assert (record.topic, record.timestamp_ms) == ("a" * 249, 2**63 - 1)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"records": [{"key": "k", "value": NaN}]}', "application/json", "NaN"),
        (b'{"records": [{"key": "k", "value": -Infinity}]}', "application/json", "Infinity"),
        (b'{"key": "k", "value": Infinity}', "application/x-ndjson", "Infinity"),
        (b'{"records": [{"key": "k", "value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
         "application/json", "nested too deeply"),
        (b'{"key": "k", "value": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
         "application/x-ndjson", "nested too deeply"),
        (b'{"records": [{"key": "k", "value": ' + b"9" * 5_000 + b"}]}", "application/json",
         "not valid JSON"),
    ],
)
def test_nan_infinity_over_deep_and_over_long_numbers_are_400_reasons(
    body: bytes, content_type: str, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(body, content_type)
    assert reason in caught.value.reasons[0].reason


def test_a_number_beyond_float_range_is_rejected_not_produced_as_infinity() -> None:
    (item,) = parse_body(b'{"records": [{"key": "k", "value": 1e400}]}', "application/json")
    with pytest.raises(InvalidRequest, match="'value'"):
        _validate([item])


_REASON_NAMES_A_FIELD = re.compile(
    r"'(topic|key|value|value_b64|headers|timestamp_ms)'|unknown field|JSON object"
)


@settings(max_examples=300, deadline=None)
@given(body=bodies(["events", "other.topic"]))
def test_any_body_is_parsed_and_validated_or_rejected_with_reasons_naming_fields(
    body: bytes,
) -> None:
    reasons: list[Reason] = []
    records: list[Record] = []
    try:
        records = _validate(parse_body(body, "application/json"))
    except InvalidRequest as exc:
        reasons = exc.reasons
    assert bool(records) != bool(reasons)
    for reason in reasons:
        assert reason.index == -1 or _REASON_NAMES_A_FIELD.search(reason.reason), reason
    for record in records:  # what was accepted is what the producer needs: UTF-8 and ranges
        assert valid_topic_name(record.topic)
        assert record.timestamp_ms is None or 0 <= record.timestamp_ms < 2**63
        for name, _ in record.headers:
            name.encode()
