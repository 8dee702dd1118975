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
from collections.abc import Callable
from typing import Any

from kafka_relay.config import valid_topic_name
from kafka_relay.handoff.body import Body
from kafka_relay.protocol import (
    FRAMES_TYPE,
    NDJSON_TYPES,
    RELAY_HEADER_PREFIX,
    Frame,
    FrameError,
    decode_frames,
)
from kafka_relay.record import Record

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
    new_id: Callable[[], str],
    request_id: str | None,
    now_ms: int,
) -> list[Record]:
    """The Records of a request body (framed, JSON or NDJSON), or InvalidRequest."""
    if content_type.split(";", 1)[0].strip().lower() == FRAMES_TYPE:
        try:
            frames = decode_frames(body)
        except FrameError as exc:
            raise InvalidRequest([Reason(exc.index, exc.reason)]) from None
        return validate_frames(frames, default_topic=default_topic, new_id=new_id,
                               request_id=request_id, now_ms=now_ms)
    return validate(parse_body(body, content_type), default_topic=default_topic,
                    new_id=new_id, request_id=request_id, now_ms=now_ms)


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
    new_id: Callable[[], str],
    request_id: str | None,
    now_ms: int,
) -> list[Record]:
    """Turn raw items into Records, or raise InvalidRequest listing every bad one."""
    if not items:
        raise InvalidRequest([Reason(-1, "no records in the request")])
    records: list[Record] = []
    reasons: list[Reason] = []
    for index, item in enumerate(items):
        try:
            records.append(_record(item, default_topic, new_id, request_id, now_ms))
        except ValueError as exc:
            reasons.append(Reason(index, str(exc)))
    if reasons:
        raise InvalidRequest(reasons, records=len(items))
    return records


def validate_frames(
    frames: list[Frame],
    *,
    default_topic: str | None,
    new_id: Callable[[], str],
    request_id: str | None,
    now_ms: int,
) -> list[Record]:
    """Records of decoded frames, or InvalidRequest listing every bad one. Values are opaque:
    the cost is per field (topic and header names, timestamp), not per value byte."""
    if not frames:
        raise InvalidRequest([Reason(-1, "no records in the request")])
    records: list[Record] = []
    append = records.append
    reasons: list[Reason] = []
    for index, (raw_topic, key, value, raw_headers, timestamp) in enumerate(frames):
        try:
            topic = default_topic if raw_topic is None else _frame_topic(raw_topic)
            if topic is None:
                raise ValueError(_NO_TOPIC)
            if timestamp is not None and not 0 < timestamp < _MAX_TIMESTAMP_MS:
                raise ValueError(_BAD_TIMESTAMP)
            headers = _named_headers(raw_headers) if raw_headers else ()
        except ValueError as exc:
            reasons.append(Reason(index, str(exc)))
            continue
        append(Record(id=new_id(), topic=topic, key=key, value=value, headers=headers,
                      timestamp_ms=timestamp, request_id=request_id, accepted_ms=now_ms))
    if reasons:
        raise InvalidRequest(reasons, records=len(frames))
    return records


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
    out = []
    for raw_name, value in headers:
        try:
            name = raw_name.decode()  # confluent-kafka takes header names as str
        except UnicodeDecodeError:
            raise ValueError(f"'headers' name {raw_name[:64]!r} is not UTF-8") from None
        if name[:_PREFIX_LEN].lower() == RELAY_HEADER_PREFIX:
            raise ValueError(_reserved(name))
        if "\x00" in name:
            raise ValueError(f"'headers' name {name[:64]!r} {_NUL_NAME}")
        out.append((name, value))
    return tuple(out)


def _record(
    item: Any,
    default_topic: str | None,
    new_id: Callable[[], str],
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
        id=new_id(),
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
