"""Handoff API v1 record schema: parse a request body and validate it whole.

A request is accepted entirely or not at all: any invalid record makes the
whole request a 400 with one reason per bad record.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka_relay.config import TOPIC_PATTERN
from kafka_relay.protocol import NDJSON_TYPES, RELAY_HEADER_PREFIX
from kafka_relay.record import Record

_FIELDS = frozenset({"topic", "key", "value", "value_b64", "headers", "timestamp_ms"})

# Hot path (every record): one encoder instead of json.dumps building one per call.
_encode_value = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@functools.lru_cache(maxsize=256)
def _valid_topic(topic: str) -> bool:
    """Cached: a batch names the same few topics over and over."""
    return TOPIC_PATTERN.match(topic) is not None


@dataclass(frozen=True)
class Reason:
    index: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason}


class InvalidRequest(Exception):
    """The body cannot be accepted; ``reasons`` has one entry per problem."""

    def __init__(self, reasons: list[Reason]) -> None:
        super().__init__("; ".join(f"record {r.index}: {r.reason}" for r in reasons))
        self.reasons = reasons


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """The list of raw record items in a JSON ``{"records": [...]}`` or NDJSON body."""
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest([Reason(-1, f"body is not UTF-8: {exc}")]) from exc
    if media in NDJSON_TYPES:
        return _parse_ndjson(text)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
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
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
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
        raise InvalidRequest(reasons)
    return records


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

    topic = item.get("topic", default_topic)
    if topic is None:
        raise ValueError("no 'topic' and no default topic: add 'topic' or set KAFKA_TOPIC")
    if not isinstance(topic, str) or not _valid_topic(topic):
        raise ValueError(
            f"topic {topic!r} is not a valid Kafka topic name (1-249 of letters, digits, ._-)"
        )

    key = item.get("key")
    if key is not None and not isinstance(key, str):
        raise ValueError("'key' must be a string or null")

    if ("value" in item) == ("value_b64" in item):
        raise ValueError("give exactly one of 'value' (any JSON) or 'value_b64' (base64 bytes)")
    if "value_b64" in item:
        encoded = item["value_b64"]
        if not isinstance(encoded, str):
            raise ValueError("'value_b64' must be a base64 string")
        try:
            value: bytes | None = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"'value_b64' is not valid base64: {exc}") from exc
    else:
        raw = item["value"]
        value = None if raw is None else _encode_value(raw).encode()

    headers = item.get("headers") or {}
    if headers:  # most records have none: skip the checks' per-record generators
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("'headers' must be an object of string to string")
        reserved = [k for k in headers if k.lower().startswith(RELAY_HEADER_PREFIX)]
        if reserved:
            raise ValueError(
                f"header(s) {reserved} use the reserved prefix {RELAY_HEADER_PREFIX!r}"
            )

    timestamp = item.get("timestamp_ms")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0
    ):
        raise ValueError("'timestamp_ms' must be a non-negative integer (epoch milliseconds)")

    return Record(
        id=new_id(),
        topic=topic,
        key=None if key is None else key.encode(),
        value=value,
        headers=tuple((k, v.encode()) for k, v in headers.items()) if headers else (),
        timestamp_ms=timestamp,
        request_id=request_id,
        accepted_ms=now_ms,
    )
