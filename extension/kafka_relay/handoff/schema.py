"""Handoff API v1 record schema: parse a request body and validate it whole.

A request is accepted entirely or not at all: any invalid record makes the
whole request a 400 with one reason per bad record, naming the field.

Validation accepts exactly what confluent-kafka and Kafka can take and deliver
unchanged: text that encodes to UTF-8 (a lone surrogate such as "\\ud800" is valid
JSON but crashes the producer), topic names by Kafka's rule matched whole,
timestamps from 1 to int64's maximum (librdkafka turns 0 into "now"), header names
without NUL (passed to C as NUL-terminated strings), JSON without NaN/Infinity,
nesting within the parser's bound.
This runs for every record: keep the common path (no headers) cheap.

A framed body (``FRAMES_TYPE``, the stdlib client's default) carries values as the
bytes that go to Kafka: they are not parsed, so validating a record costs its
fields, not its value's size. Its values are the sender's business, as
``value_b64`` is in JSON: the stdlib client writes valid JSON for ``value``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import struct
from collections.abc import Callable
from typing import Any

from kafka_relay.config import valid_topic_name
from kafka_relay.handoff.body import Body
from kafka_relay.protocol import (
    FLAG_KEY,
    FLAG_TIMESTAMP,
    FLAG_TOPIC,
    FLAG_VALUE_NULL,
    FRAME_FLAGS,
    FRAME_HEADER,
    FRAME_RECORD,
    FRAMES_HEAD,
    FRAMES_MAGIC,
    FRAMES_TYPE,
    NDJSON_TYPES,
    RELAY_HEADER_PREFIX,
)
from kafka_relay.record import Record

# Ids for that many records, drawn as one block (IdSource.take).
NewIds = Callable[[int], list[str]]

_FIELDS = frozenset({"topic", "key", "value", "value_b64", "headers", "timestamp_ms"})
_PREFIX_LEN = len(RELAY_HEADER_PREFIX)
_MAX_TIMESTAMP_MS = 2**63  # exclusive: Kafka timestamps are int64 epoch milliseconds
_NOT_UNICODE = ("is not valid Unicode text (it holds a lone surrogate such as \\ud800): "
                "send UTF-8 text, or bytes in base64")
_TOO_DEEP = "JSON nested too deeply (the parser's limit is about 900 levels)"
_NO_TOPIC = "no 'topic' and no default topic: add 'topic' or set KAFKA_TOPIC"
# librdkafka reads a timestamp of 0 as "now": a record given 0 would arrive with the
# producer's clock, so 0 is refused rather than silently changed.
_BAD_TIMESTAMP = ("'timestamp_ms' must be an integer from 1 to 2**63-1 (epoch milliseconds); "
                  "0 cannot be produced (librdkafka reads it as 'now'): omit it for the "
                  "producer's time")
_NUL_NAME = ("holds a NUL character, which the producer cannot carry in a header name (it "
             "would arrive cut short)")


def _bad_topic(topic: object) -> str:
    return (f"'topic' {topic!r} is not a valid Kafka topic name (1-249 of letters, digits, "
            "'.', '_', '-'; not '.' or '..')")


def _reserved(name: str) -> str:
    return f"'headers' name {name!r} uses the reserved prefix {RELAY_HEADER_PREFIX!r}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (only finite numbers are)")


# Hot path (every record): one decoder and one encoder, not one per call. The C scanner
# is still used with a parse_constant hook; allow_nan=False rejects 1e400 (parsed as inf).
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode_value = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False).encode


@functools.lru_cache(maxsize=256)
def _valid_topic(topic: str) -> bool:
    """Cached: a batch names the same few topics over and over."""
    return valid_topic_name(topic)


class Reason:
    __slots__ = ("index", "reason")

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason}


class InvalidRequest(Exception):
    """The body cannot be accepted; ``reasons`` has one entry per problem."""

    def __init__(self, reasons: list[Reason], *, records: int = 0) -> None:
        super().__init__("; ".join(f"record {r.index}: {r.reason}" for r in reasons))
        self.reasons = reasons
        self.records = records  # how many the request held (0: unknown), counted as rejected


def records_from_body(
    body: Body,
    content_type: str,
    *,
    default_topic: str | None,
    new_ids: NewIds,
    request_id: str | None,
    now_ms: int,
) -> list[Record]:
    """The Records of a request body (framed, JSON or NDJSON), or InvalidRequest."""
    if content_type.split(";", 1)[0].strip().lower() == FRAMES_TYPE:
        return framed_records(body, default_topic=default_topic, new_ids=new_ids,
                              request_id=request_id, now_ms=now_ms)
    return validate(parse_body(body, content_type), default_topic=default_topic,
                    new_ids=new_ids, request_id=request_id, now_ms=now_ms)


def parse_body(body: Body, content_type: str) -> list[Any]:
    """The list of raw record items in a JSON ``{"records": [...]}`` or NDJSON body."""
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        text = str(body, "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest([Reason(-1, f"body is not UTF-8: {exc}")]) from exc
    if media in NDJSON_TYPES:
        return _parse_ndjson(text)
    try:
        document = _decode(text)
    except RecursionError as exc:
        raise InvalidRequest([Reason(-1, f"body: {_TOO_DEEP}")]) from exc
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an int over 4300 digits
        if media == "application/json":
            raise InvalidRequest([Reason(-1, f"body is not valid JSON: {exc}")]) from exc
        return _parse_ndjson(text)
    if not isinstance(document, dict) or not isinstance(document.get("records"), list):
        raise InvalidRequest(
            [Reason(-1, 'body must be {"records": [...]} (JSON) or one record per line (NDJSON)')]
        )
    return list(document["records"])


def _parse_ndjson(text: str) -> list[Any]:
    items: list[Any] = []
    reasons: list[Reason] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            items.append(_decode(line))
        except RecursionError:
            reasons.append(Reason(len(items) + len(reasons), f"line: {_TOO_DEEP}"))
        except ValueError as exc:
            reasons.append(Reason(len(items) + len(reasons), f"line is not valid JSON: {exc}"))
    if reasons:
        raise InvalidRequest(reasons)
    return items


def validate(
    items: list[Any],
    *,
    default_topic: str | None,
    new_ids: NewIds,
    request_id: str | None,
    now_ms: int,
) -> list[Record]:
    """Turn raw items into Records, or raise InvalidRequest listing every bad one."""
    if not items:
        raise InvalidRequest([Reason(-1, "no records in the request")])
    records: list[Record] = []
    reasons: list[Reason] = []
    for index, (item, record_id) in enumerate(zip(items, new_ids(len(items)), strict=True)):
        try:
            records.append(_record(item, default_topic, record_id, request_id, now_ms))
        except ValueError as exc:
            reasons.append(Reason(index, str(exc)))
    if reasons:
        raise InvalidRequest(reasons, records=len(items))
    return records


def framed_records(
    body: Body,
    *,
    default_topic: str | None,
    new_ids: NewIds,
    request_id: str | None,
    now_ms: int,
) -> list[Record]:
    """The Records of a framed body, read and validated in one pass (the stdlib client's
    body, the hot path: this runs per record). A body that cannot be read is one reason
    (``-1``, or the record where it breaks); invalid fields are one reason per bad record.
    Lengths are checked against the body before any slice, so no input reads past it, and
    values are opaque: the cost is per field, not per value byte."""
    size = len(body)
    head = FRAMES_HEAD.size
    if size < head:
        raise _unreadable(-1, f"a framed body starts with an {head}-byte header; this one "
                              f"has {size} bytes")
    magic, count = FRAMES_HEAD.unpack_from(body, 0)
    if magic != FRAMES_MAGIC:
        raise _unreadable(-1, f"the body starts with {magic!r}, not {FRAMES_MAGIC!r}: not "
                              f"{FRAMES_TYPE}")
    fixed = FRAME_RECORD.size
    if count > (size - head) // fixed:
        raise _unreadable(-1, f"the body announces {count} records but its {size} bytes hold "
                              f"at most {(size - head) // fixed}")
    records: list[Record] = []
    append = records.append
    reasons: list[Reason] = []
    unpack = FRAME_RECORD.unpack_from
    new, init = object.__new__, Record.__init__  # Record(...) without type.__call__'s cost
    pos = head
    for index in range(count):
        try:  # a header that passes the end of the body: no check per record when none does
            flags, topic_len, key_len, value_len, header_count, timestamp = unpack(body, pos)
        except struct.error:
            raise _unreadable(index, f"truncated: its {fixed}-byte header passes the end of "
                                     "the body") from None
        start = pos + fixed
        if flags == FLAG_KEY and not (topic_len or timestamp or header_count) \
                and default_topic is not None:
            # The usual record (a key and a value, nothing else): no other check.
            value_at = start + key_len
            pos = value_at + value_len
            if pos > size:
                raise _truncated(index, pos - start, size - start)
            record = new(Record)
            init(record, "", default_topic, body[start:value_at], body[value_at:pos],
                 (), None, request_id, now_ms, None, key_len + value_len)
            append(record)
            continue
        if ((flags & ~FRAME_FLAGS) or (topic_len and not flags & FLAG_TOPIC)
                or (key_len and not flags & FLAG_KEY) or (value_len and flags & FLAG_VALUE_NULL)
                or (timestamp and not flags & FLAG_TIMESTAMP)):
            raise _unreadable(index, _flag_problem(flags, topic_len, key_len, value_len,
                                                   timestamp))
        key_at = start + topic_len
        value_at = key_at + key_len
        pos = value_at + value_len
        if pos > size:
            raise _truncated(index, pos - start, size - start)
        value = None if flags & FLAG_VALUE_NULL else body[value_at:pos]
        raw_headers: tuple[tuple[bytes, bytes], ...] = ()
        if header_count:
            raw_headers, pos = _read_headers(body, pos, header_count, index)
        try:
            topic = _frame_topic(body[start:key_at]) if flags & FLAG_TOPIC else default_topic
            if topic is None:
                raise ValueError(_NO_TOPIC)
            if flags & FLAG_TIMESTAMP and not 0 < timestamp < _MAX_TIMESTAMP_MS:
                raise ValueError(_BAD_TIMESTAMP)
            headers = _named_headers(raw_headers) if header_count else ()
        except ValueError as exc:
            reasons.append(Reason(index, str(exc)))
            continue
        record = new(Record)
        init(record, "", topic, body[key_at:value_at] if flags & FLAG_KEY else None,
             value, headers, timestamp if flags & FLAG_TIMESTAMP else None, request_id, now_ms)
        append(record)
    if pos != size:
        raise _unreadable(-1, f"{size - pos} bytes after the last of the {count} records")
    if not count:
        raise InvalidRequest([Reason(-1, "no records in the request")])
    if reasons:
        raise InvalidRequest(reasons, records=count)
    # Ids last, for a body read whole: drawn first, a count the body lies about would cost
    # ~70 B per announced record (up to 3x the body) before the lie shows.
    for record, record_id in zip(records, new_ids(count), strict=True):
        record.id = record_id
    return records


def _unreadable(index: int, reason: str) -> InvalidRequest:
    """A framed body that cannot be read past ``index`` (-1: the body): nothing of it is
    accepted, and its records are not counted (how many it holds is not known)."""
    return InvalidRequest([Reason(index, reason)])


def _truncated(index: int, length: int, left: int) -> InvalidRequest:
    return _unreadable(index, f"truncated: topic, key and value ({length} bytes) pass the end "
                              f"of the body ({left} left)")


def _read_headers(body: Body, pos: int, count: int,
                  index: int) -> tuple[tuple[tuple[bytes, bytes], ...], int]:
    """The headers from ``pos`` on, and the position after them."""
    size = len(body)
    fixed = FRAME_HEADER.size
    out = []
    for number in range(count):
        if pos + fixed > size:
            raise _unreadable(index, f"truncated: header {number} of {count} passes the end "
                                     "of the body")
        name_len, value_len = FRAME_HEADER.unpack_from(body, pos)
        name_at = pos + fixed
        value_at = name_at + name_len
        pos = value_at + value_len
        if pos > size:
            raise _unreadable(index, f"truncated: header {number} of {count} "
                                     f"({name_len + value_len} bytes) passes the end of the "
                                     "body")
        out.append((body[name_at:value_at], body[value_at:pos]))
    return tuple(out), pos


def _flag_problem(flags: int, topic_len: int, key_len: int, value_len: int,
                  timestamp: int) -> str:
    if flags & ~FRAME_FLAGS:
        return f"unknown flags 0x{flags & ~FRAME_FLAGS:02x} (this extension reads frames v1)"
    if topic_len and not flags & FLAG_TOPIC:
        return "a topic length without the topic flag"
    if key_len and not flags & FLAG_KEY:
        return "a key length without the key flag"
    if value_len and flags & FLAG_VALUE_NULL:
        return "a value length with the null-value flag"
    return f"timestamp {timestamp} without the timestamp flag"


@functools.lru_cache(maxsize=256)
def _frame_topic(raw: bytes) -> str:
    """Cached per topic: a batch names the same few topics over and over."""
    try:
        topic = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"'topic' {raw[:64]!r} is not UTF-8, so not a valid Kafka topic "
                         "name") from None
    if not _valid_topic(topic):
        raise ValueError(_bad_topic(topic))
    return topic


def _named_headers(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    return tuple([(_header_name(raw_name), value) for raw_name, value in headers])


@functools.lru_cache(maxsize=256)
def _header_name(raw: bytes) -> str:
    """Cached per name: a batch names the same few headers over and over."""
    try:
        name = raw.decode()  # confluent-kafka takes header names as str
    except UnicodeDecodeError:
        raise ValueError(f"'headers' name {raw[:64]!r} is not UTF-8") from None
    if name[:_PREFIX_LEN].lower() == RELAY_HEADER_PREFIX:
        raise ValueError(_reserved(name))
    if "\x00" in name:
        raise ValueError(f"'headers' name {name[:64]!r} {_NUL_NAME}")
    return name


def _record(
    item: Any,
    default_topic: str | None,
    record_id: str,
    request_id: str | None,
    now_ms: int,
) -> Record:
    if not isinstance(item, dict):
        raise ValueError("a record must be a JSON object")
    if not _FIELDS.issuperset(item):
        unknown = item.keys() - _FIELDS
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}")

    topic = item.get("topic")
    if topic is None:  # absent or null: the default, as in the framed body
        topic = default_topic
    if topic is None:
        raise ValueError(_NO_TOPIC)
    if not isinstance(topic, str) or not _valid_topic(topic):
        raise ValueError(_bad_topic(topic))

    key = item.get("key")
    if key is not None:
        if type(key) is not str:
            raise ValueError("'key' must be a string or null")
        key = _utf8(key, "'key'")

    if ("value" in item) == ("value_b64" in item):
        raise ValueError("give exactly one of 'value' (any JSON) or 'value_b64' (base64 bytes)")
    value: bytes | None
    if "value_b64" in item:
        value = _value_b64(item["value_b64"])
    else:
        raw = item["value"]
        try:  # inline: the hot path
            value = None if raw is None else _encode_value(raw).encode()
        except (ValueError, RecursionError) as exc:
            raise _value_problem(exc) from None

    raw_headers = item.get("headers")
    # Most records have none: skip the per-header loop.
    headers = _headers(raw_headers) if raw_headers else ()

    timestamp = item.get("timestamp_ms")
    if timestamp is not None and (
        type(timestamp) is not int or not 0 < timestamp < _MAX_TIMESTAMP_MS
    ):
        raise ValueError(_BAD_TIMESTAMP)

    return Record(
        id=record_id,
        topic=topic,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=timestamp,
        request_id=request_id,
        accepted_ms=now_ms,
    )


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} {_NOT_UNICODE}") from None


def _value_problem(exc: Exception) -> ValueError:
    if isinstance(exc, RecursionError):
        return ValueError(f"'value': {_TOO_DEEP}")
    if isinstance(exc, UnicodeEncodeError):
        return ValueError(f"'value' {_NOT_UNICODE}")
    return ValueError("'value' holds a number JSON cannot carry (NaN, Infinity or out of "
                      "range): send finite numbers")


def _value_b64(encoded: Any) -> bytes:
    if not isinstance(encoded, str):
        raise ValueError("'value_b64' must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"'value_b64' is not valid base64: {exc}") from exc


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(headers, dict):
        raise ValueError("'headers' must be an object of string to string")
    out = []
    for name, value in headers.items():  # one pass: this runs for every record with headers
        if type(value) is not str:
            raise ValueError(f"'headers' value of {name!r} must be a string")
        if name[:_PREFIX_LEN].lower() == RELAY_HEADER_PREFIX:
            raise ValueError(_reserved(name))
        _utf8(name, f"'headers' name {name!r}")  # confluent-kafka hands names to C as UTF-8
        if "\x00" in name:  # ... as a NUL-terminated string
            raise ValueError(f"'headers' name {name[:64]!r} {_NUL_NAME}")
        out.append((name, _utf8(value, f"'headers' value of {name!r}")))
    return tuple(out)
