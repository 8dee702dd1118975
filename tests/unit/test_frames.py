"""The framed handoff body: the encoder against the format as protocol.py writes it down,
the extension's one-pass reader against the same (hostile bytes, cuts, bad lengths, bad
UTF-8 names), and the same verdict and the same Kafka bytes as the JSON path for any record."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.config import valid_topic_name
from kafka_relay.handoff.schema import InvalidRequest, records_from_body
from kafka_relay.protocol import (
    FLAG_KEY,
    FLAG_TIMESTAMP,
    FLAG_TOPIC,
    FLAG_VALUE_NULL,
    FRAMES_MAGIC,
    FRAMES_TYPE,
    JSON_TYPE,
    FrameError,
    encode_frames,
    encode_value,
)
from kafka_relay.record import IdSource, Record
from tests.record_strategies import items

# The layout as protocol.py's comment states it, spelled out here rather than imported:
# the reference below reads the format from its description, not from the code under test.
_RECORD = struct.Struct("<BHIIHQ")
_HEADER = struct.Struct("<HI")

# (topic, key, value, headers, timestamp_ms) as sent; None where absent
Fields = tuple[bytes | None, bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...],
               int | None]


def _reference(body: bytes) -> list[Fields] | None:
    """Every record of a framed body, read naively, field after field; None when the body
    breaks the format anywhere."""
    if len(body) < 8 or body[:4] != FRAMES_MAGIC:
        return None
    (count,) = struct.unpack_from("<I", body, 4)
    pos, out = 8, []

    def take(size: int) -> bytes | None:
        nonlocal pos
        if pos + size > len(body):
            return None
        pos += size
        return body[pos - size:pos]

    for _ in range(count):
        head = take(_RECORD.size)
        if head is None:
            return None
        flags, topic_len, key_len, value_len, header_count, timestamp = _RECORD.unpack(head)
        if (flags > 15 or (topic_len and not flags & FLAG_TOPIC)
                or (key_len and not flags & FLAG_KEY) or (value_len and flags & FLAG_VALUE_NULL)
                or (timestamp and not flags & FLAG_TIMESTAMP)):
            return None
        topic, key, value = take(topic_len), take(key_len), take(value_len)
        if topic is None or key is None or value is None:
            return None
        headers = []
        for _ in range(header_count):
            lengths = take(_HEADER.size)
            if lengths is None:
                return None
            name_len, header_len = _HEADER.unpack(lengths)
            name, header_value = take(name_len), take(header_len)
            if name is None or header_value is None:
                return None
            headers.append((name, header_value))
        out.append((topic if flags & FLAG_TOPIC else None, key if flags & FLAG_KEY else None,
                    None if flags & FLAG_VALUE_NULL else value, tuple(headers),
                    timestamp if flags & FLAG_TIMESTAMP else None))
    return out if pos == len(body) else None


def _acceptable(fields: Fields, default_topic: str) -> bool:
    """What the extension must accept of a readable record (the rules schema.py states)."""
    topic, _key, _value, headers, timestamp = fields
    try:
        names = [name.decode() for name, _ in headers]
        topic_text = default_topic if topic is None else topic.decode()
    except UnicodeDecodeError:
        return False
    return (valid_topic_name(topic_text) and (timestamp is None or 0 < timestamp < 2**63)
            and not any(n.lower().startswith("x-relay-") or "\x00" in n for n in names))

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
    return records_from_body(body, content_type, default_topic=topic, new_ids=IdSource("p").take,
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


_ABSENT_AS_NULL: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {}, optional={"topic": st.none(), "headers": st.none() | st.just({}),
                  "timestamp_ms": st.none()})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(framable, _ABSENT_AS_NULL), max_size=6))
def test_a_field_given_as_null_or_empty_frames_as_the_field_left_out(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    records = [record for record, _nulls in pairs]
    with_nulls = [{**record, **{name: value for name, value in nulls.items()
                                if name not in record}} for record, nulls in pairs]
    assert encode_frames(with_nulls) == encode_frames(records)
    _assert_round_trip(with_nulls)


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
    frames = _reference(encode_frames(records))
    assert frames is not None
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


# -- hostile bytes: the extension's reader against the reference -----------------------------


def _read(body: bytes, default_topic: str = "t") -> list[Fields] | InvalidRequest:
    """What the extension makes of a body: each record's fields as sent, or its refusal. Ids
    are drawn once, for a body accepted whole: a refused one (a lying count) draws none."""
    drawn: list[int] = []

    def new_ids(count: int) -> list[str]:
        drawn.append(count)
        return IdSource("p").take(count)

    try:
        records = records_from_body(body, FRAMES_TYPE, default_topic=default_topic,
                                    new_ids=new_ids, request_id="req", now_ms=1)
    except InvalidRequest as exc:
        assert drawn == []
        return exc
    assert drawn == [len(records)]
    assert [r.id for r in records] == [f"p-{n:08x}" for n in range(1, len(records) + 1)]
    return [(None if r.topic == default_topic else r.topic.encode(), r.key, r.value,
             tuple((n.encode(), v) for n, v in r.headers), r.timestamp_ms) for r in records]


def _assert_read_as_the_format_says(body: bytes) -> None:
    """The reader accepts exactly the readable, non-empty bodies whose every record is
    acceptable, each record field for field as sent; anything else is refused whole, with
    reasons that name a record of the body (or -1), and nothing else is raised."""
    expected = _reference(body)
    got = _read(body)
    if expected and all(_acceptable(fields, "t") for fields in expected):
        assert not isinstance(got, InvalidRequest), got
        # a record naming the default topic reads back as "no topic": compare so
        assert got == [(None if topic == b"t" else topic, *rest) for topic, *rest in expected]
        return
    assert isinstance(got, InvalidRequest), (body, got)
    if expected is None:  # unreadable: one reason (the body or a record), none counted
        assert len(got.reasons) == 1
        assert got.records == 0
        return
    # readable: one reason per refused record (-1: there are none), every record counted
    refused = [i for i, fields in enumerate(expected) if not _acceptable(fields, "t")]
    assert [r.index for r in got.reasons] == (refused or [-1])
    assert got.records == len(expected)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_or_read_as_the_format_says(data: bytes) -> None:
    for body in (data, FRAMES_MAGIC + data):
        _assert_read_as_the_format_says(body)


names = st.binary(max_size=6) | st.sampled_from([b"t", b"other", b"x-relay-id", b"a\x00b",
                                                 b"\xff", b"h", b"\xc3\xa9"])


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    """One record framed by hand: any flags, any bytes as topic and header names (bad UTF-8,
    reserved, NUL), lengths that match the bytes or not, any timestamp."""
    flags = draw(st.integers(0, 31) | st.sampled_from([FLAG_KEY, FLAG_KEY | FLAG_TOPIC]))
    topic = draw(names) if flags & FLAG_TOPIC else b""
    key = draw(st.binary(max_size=4)) if flags & FLAG_KEY else b""
    value = b"" if flags & FLAG_VALUE_NULL else draw(st.binary(max_size=6))
    headers = draw(st.lists(st.tuples(names, st.binary(max_size=3)), max_size=2))
    timestamp = draw(st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1])
                     if flags & FLAG_TIMESTAMP else st.just(0) | st.integers(0, 2**64 - 1))
    head = _RECORD.pack(flags, len(topic), len(key), len(value), len(headers), timestamp)
    tail = b"".join(_HEADER.pack(len(n), len(v)) + n + v for n, v in headers)
    return head + topic + key + value + tail


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_frames(), max_size=4), st.integers(-1, 2), st.binary(max_size=3))
def test_hand_framed_records_are_refused_or_read_as_the_format_says(
    frames: list[bytes], miscount: int, tail: bytes,
) -> None:
    body = _body(*frames, count=max(0, len(frames) + miscount))
    _assert_read_as_the_format_says(body)
    _assert_read_as_the_format_says(body + tail)


@settings(max_examples=100, deadline=None)
@given(st.lists(framable, min_size=1, max_size=4), st.data())
def test_every_cut_or_corrupted_body_is_refused_whole_or_read_as_the_format_says(
    records: list[dict[str, Any]], data: st.DataObject,
) -> None:
    body = encode_frames(records)
    for end in range(len(body)):
        refused = _read(body[:end])
        assert isinstance(refused, InvalidRequest)
        assert (len(refused.reasons), refused.records) == (1, 0)
    position = data.draw(st.integers(0, len(body) - 1))
    corrupted = bytearray(body)
    corrupted[position] = data.draw(st.integers(0, 255))
    _assert_read_as_the_format_says(bytes(corrupted))


@settings(max_examples=100, deadline=None)
@given(st.lists(framable, min_size=1, max_size=6))
def test_usual_and_unusual_records_mixed_in_one_body_each_read_as_sent(
    records: list[dict[str, Any]],
) -> None:
    """The reader's quick way for a plain key + value and its general way interleave."""
    plain = [{"key": f"k{n}", "value": n} for n in range(len(records))]
    mixed = [r for pair in zip(plain, records, strict=True) for r in pair]
    _assert_read_as_the_format_says(encode_frames(mixed))


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
        (_body(_frame(value=b"x", flags=FLAG_KEY | FLAG_VALUE_NULL)), 0,
         "a value length with the null-value flag"),
        (_body(_frame(topic=b"t", flags=FLAG_KEY)), 0, "a topic length without the topic flag"),
    ],
)
def test_a_malformed_body_names_the_record_and_the_problem_and_accepts_nothing(
    body: bytes, index: int, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as rejected:
        _records(body)
    (only,) = rejected.value.reasons
    assert (only.index, reason in only.reason) == (index, True), only.reason
    assert rejected.value.records == 0


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
