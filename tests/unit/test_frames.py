"""The framed handoff body: encode/decode round trips, hostile bytes, and the same verdict
and the same Kafka bytes as the JSON path for any record."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.handoff.schema import InvalidRequest, records_from_body
from kafka_relay.protocol import (
    FLAG_KEY,
    FLAG_TIMESTAMP,
    FLAG_TOPIC,
    FRAMES_MAGIC,
    FRAMES_TYPE,
    JSON_TYPE,
    FrameError,
    decode_frames,
    encode_frames,
    encode_value,
)
from kafka_relay.record import IdSource, Record
from tests.record_strategies import items

_RECORD = struct.Struct("<BHIIHQ")
_HEADER = struct.Struct("<HI")

finite_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)
texts = st.text(max_size=12)
header_names = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                       max_size=12)
framable = st.fixed_dictionaries(
    {"value": finite_json | st.binary(max_size=40)},
    optional={"topic": texts, "key": st.none() | texts | st.binary(max_size=10),
              "headers": st.dictionaries(header_names, texts | st.binary(max_size=8),
                                         max_size=3),
              "timestamp_ms": st.integers(1, 2**63 - 1)},
)


def _body(*records: bytes, count: int | None = None) -> bytes:
    head = FRAMES_MAGIC + struct.pack("<I", len(records) if count is None else count)
    return head + b"".join(records)


def _frame(key: bytes = b"k", value: bytes = b"1", *, topic: bytes = b"", flags: int | None = None,
           headers: tuple[tuple[bytes, bytes], ...] = (), timestamp: int = 0) -> bytes:
    if flags is None:
        flags = FLAG_KEY | (FLAG_TOPIC if topic else 0) | (FLAG_TIMESTAMP if timestamp else 0)
    head = _RECORD.pack(flags, len(topic), len(key), len(value), len(headers), timestamp)
    tail = b"".join(_HEADER.pack(len(n), len(v)) + n + v for n, v in headers)
    return head + topic + key + value + tail


def _records(body: bytes, content_type: str = FRAMES_TYPE, topic: str | None = "t") -> list[Record]:
    return records_from_body(body, content_type, default_topic=topic, new_id=IdSource("p").next,
                             request_id="req", now_ms=1)


def _as_bytes(text_or_bytes: str | bytes) -> bytes:
    return text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes


# -- round trip ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(framable, max_size=6))
def test_every_record_decodes_to_its_fields_with_the_value_as_kafka_gets_it(
    records: list[dict[str, Any]],
) -> None:
    _assert_round_trip(records)


@st.composite
def batches_sharing_topics_and_headers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records that name the same few topics and header sets again and again, as a batch
    usually does: the encoder checks and encodes each once per body."""
    topics = draw(st.lists(texts, min_size=1, max_size=2))
    header_sets = draw(st.lists(st.dictionaries(header_names, texts | st.binary(max_size=8),
                                                max_size=3), min_size=1, max_size=2))
    shared = st.fixed_dictionaries({}, optional={"topic": st.sampled_from(topics),
                                                 "headers": st.sampled_from(header_sets)})
    pairs = draw(st.lists(st.tuples(framable, shared), min_size=1, max_size=8))
    return [{**record, **names} for record, names in pairs]


@settings(max_examples=200, deadline=None)
@given(batches_sharing_topics_and_headers())
def test_records_sharing_topics_and_headers_each_decode_to_their_own_fields(
    records: list[dict[str, Any]],
) -> None:
    _assert_round_trip(records)


def _assert_round_trip(records: list[dict[str, Any]]) -> None:
    frames = decode_frames(encode_frames(records))
    assert len(frames) == len(records)
    for record, (topic, key, value, headers, timestamp) in zip(records, frames, strict=True):
        raw = record["value"]
        expected = raw if isinstance(raw, bytes) else (
            None if raw is None else json.dumps(raw, ensure_ascii=False, separators=(",", ":"),
                                                allow_nan=False).encode())
        assert value == expected
        assert topic == (None if record.get("topic") is None else record["topic"].encode())
        assert key == (None if record.get("key") is None else _as_bytes(record["key"]))
        assert headers == tuple((n.encode(), _as_bytes(v))
                                for n, v in (record.get("headers") or {}).items())
        assert timestamp == record.get("timestamp_ms")


@settings(max_examples=400, deadline=None)
@given(items(["t", "other"]))
def test_frames_and_json_give_the_same_verdict_and_the_same_kafka_record(
    item: dict[str, Any],
) -> None:
    """Whatever a caller hands over, the framed path (client + extension) accepts it iff the
    JSON path does, and then produces the same topic, key, value, headers and timestamp."""
    try:
        framed: list[Record] | None = _records(encode_frames([item]))
    except (FrameError, InvalidRequest):
        framed = None
    try:
        plain: list[Record] | None = _records(json.dumps({"records": [item]}).encode(),
                                              JSON_TYPE)
    except InvalidRequest:
        plain = None
    assert (framed is None) == (plain is None)
    if framed is not None and plain is not None:
        (a,), (b,) = framed, plain
        assert (a.topic, a.key, a.value, a.headers, a.timestamp_ms) == (
            b.topic, b.key, b.value, b.headers, b.timestamp_ms)


def test_the_value_bytes_are_compact_utf8_json() -> None:
    assert encode_value({"é": [1, 2.5, None, True]}) == '{"é":[1,2.5,null,true]}'.encode()


# -- hostile bytes ---------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_nothing_but_a_frame_error(data: bytes) -> None:
    for body in (data, FRAMES_MAGIC + data):
        with contextlib.suppress(FrameError):
            decode_frames(body)
        # and the extension's whole path answers them with a 400 or accepts them
        with contextlib.suppress(InvalidRequest):
            _records(body)


@settings(max_examples=100, deadline=None)
@given(st.lists(framable, min_size=1, max_size=4), st.data())
def test_every_cut_or_corrupted_body_is_refused_whole_or_read_within_bounds(
    records: list[dict[str, Any]], data: st.DataObject,
) -> None:
    body = encode_frames(records)
    for end in range(len(body)):
        with pytest.raises(FrameError):
            decode_frames(body[:end])
    position = data.draw(st.integers(0, len(body) - 1))
    corrupted = bytearray(body)
    corrupted[position] = data.draw(st.integers(0, 255))
    try:
        frames = decode_frames(bytes(corrupted))
    except FrameError:
        return
    assert sum(len(v or b"") + len(k or b"") for _t, k, v, _h, _ts in frames) <= len(body)


@pytest.mark.parametrize(
    ("body", "index", "reason"),
    [
        (b"KRF", -1, "8-byte header"),
        (b"JSON" + b"\x01\x00\x00\x00", -1, "not b'KRF\\x01'"),
        (_body(count=2**32 - 1), -1, "announces 4294967295 records but its 8 bytes hold at most 0"),
        (_body(_frame(), _frame()[:-1]), 1, "truncated: topic, key and value"),
        (_body(_frame(), _frame()[:10]), -1, "announces 2 records but its 41 bytes hold at most 1"),
        (_body(_frame(value=b"x" * 30), _frame()[:10]), 1, "truncated: its 21-byte header"),
        (_body(_frame(headers=((b"h", b"v"),))[:-1]), 0, "truncated: header 0 of 1"),
        (_body(_frame()) + b"\x00", -1, "1 bytes after the last of the 1 records"),
        (_body(_frame(flags=0x10)), 0, "unknown flags 0x10"),
        (_body(_frame(flags=0)), 0, "a key length without the key flag"),
        (_body(_frame(timestamp=5, flags=FLAG_KEY)), 0, "timestamp 5 without the timestamp flag"),
        (_body(_frame(value=b"x" * 10, key=b"")[:25]), 0, "truncated"),
    ],
)
def test_a_malformed_body_names_the_record_and_the_problem_and_accepts_nothing(
    body: bytes, index: int, reason: str
) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frames(body)
    assert (caught.value.index, reason in caught.value.reason) == (index, True), caught.value
    with pytest.raises(InvalidRequest) as rejected:
        _records(body)
    assert rejected.value.reasons[0].index == index


# -- validation: per field, never per value byte ------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_frame(topic=b"bad topic"), "not a valid Kafka topic name"),
        (_frame(topic=b"\xff\xfe"), "is not UTF-8"),
        (_frame(topic=b"."), "not a valid Kafka topic name"),
        (_frame(timestamp=2**63), "from 1 to 2**63-1"),
        (_frame(flags=FLAG_KEY | FLAG_TIMESTAMP), "librdkafka reads it as 'now'"),
        (_frame(headers=((b"a\x00b", b"v"),)), "holds a NUL character"),
        (_frame(headers=((b"\xff", b"v"),)), "'headers' name b'\\xff' is not UTF-8"),
        (_frame(headers=((b"X-Relay-Id", b"v"),)), "reserved prefix 'x-relay-'"),
    ],
)
def test_invalid_fields_are_reasons_for_their_record_and_nothing_is_accepted(
    frame: bytes, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _records(_body(_frame(), frame))
    (only,) = caught.value.reasons
    assert only.index == 1
    assert reason in only.reason
    assert caught.value.records == 2


def test_without_a_topic_the_default_topic_is_used_or_the_record_refused() -> None:
    (record,) = _records(_body(_frame()), topic="fallback")
    assert record.topic == "fallback"
    with pytest.raises(InvalidRequest, match="no 'topic' and no default topic"):
        _records(_body(_frame()), topic=None)


def test_values_are_opaque_bytes_handed_on_unparsed() -> None:
    value = b"\xff not json \x00"
    (record,) = _records(_body(_frame(value=value, headers=((b"h", b"\x00"),),
                                      timestamp=7, topic=b"x")))
    assert (record.topic, record.key, record.value) == ("x", b"k", value)
    assert (record.headers, record.timestamp_ms, record.request_id) == (
        (("h", b"\x00"),), 7, "req")
    assert record.size == len(b"k") + len(value) + len("h") + 1


def test_an_empty_framed_body_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="no records"):
        _records(_body())


# -- the encoder refuses what the extension would -------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"value": float("nan")}, "NaN, Infinity"),
        ({"value": "\ud800"}, "lone surrogate"),
        ({"key": "\udfff", "value": 1}, "'key' is not valid Unicode"),
        ({"key": 1, "value": 1}, "'key' must be a string"),
        ({"value": object()}, "'value' is not JSON"),
        ({"value": 1, "value_b64": "AA=="}, "exactly one of"),
        ({"key": "k"}, "exactly one of"),
        ({"value_b64": "not base64!"}, "not valid base64"),
        ({"value": 1, "colour": "red"}, "unknown field(s) ['colour']"),
        ({"value": 1, "timestamp_ms": -1}, "from 1 to 2**63-1"),
        ({"value": 1, "timestamp_ms": True}, "from 1 to 2**63-1"),
        ({"value": 1, "timestamp_ms": 0}, "librdkafka reads it as 'now'"),
        ({"value": 1, "headers": {"a\x00b": "v"}}, "holds a NUL character"),
        ({"value": 1, "headers": {"h": 1}}, "'headers' value of 'h' must be a string"),
        ({"value": 1, "headers": ["h"]}, "must be an object"),
        ({"value": 1, "topic": 5}, "'topic' must be a string"),
        ("not a record", "must be an object"),
    ],
)
def test_a_record_that_cannot_be_framed_is_a_frame_error_naming_it(
    record: Any, reason: str
) -> None:
    with pytest.raises(FrameError) as caught:
        encode_frames([{"value": 1}, record])
    assert caught.value.index == 1
    assert reason in caught.value.reason


def test_a_self_referencing_value_is_a_frame_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(FrameError, match="nested too deeply or refers to itself"):
        encode_frames([{"value": loop}])
