"""The handoff wire protocol, shared by ``kafka_relay.client`` and the extension. Stdlib only.

Everything both sides must agree on lives here and nowhere else: the default
port, routes, header names, media types, the outcome and broker-state names,
the Kafka headers the relay adds, the one ``RelayError`` hierarchy, and the framed
body's layout and its encoder (the extension reads it with these same structs, in
``kafka_relay.handoff.schema``, where each record is validated as it is read).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any

DEFAULT_PORT = 4195

# -- environment variables both sides read --------------------------------------------
PORT_ENV = "KAFKA_RELAY_PORT"
TOKEN_ENV = "KAFKA_RELAY_TOKEN"
SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"  # the token when KAFKA_RELAY_TOKEN is unset
# SnapStart environments have no AWS_SESSION_TOKEN (credentials come from the container
# endpoint): both sides fall back to the endpoint's authorization token, also set everywhere.
CONTAINER_TOKEN_ENV = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
TOKEN_SOURCES = (TOKEN_ENV, SESSION_TOKEN_ENV, CONTAINER_TOKEN_ENV)  # first non-empty wins
FALLBACK_ENV = "KAFKA_RELAY_FALLBACK"  # "direct": produce in-process when no extension answers
FALLBACK_DIRECT = "direct"


def handoff_token(env: Mapping[str, str]) -> str | None:
    """The handoff token both the client and the extension resolve from the same environment:
    the first non-empty of ``TOKEN_SOURCES`` (surrounding spaces dropped), or None."""
    for name in TOKEN_SOURCES:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


# -- routes ---------------------------------------------------------------------------
RECORDS_PATH = "/v1/records"
FLUSH_PATH = "/v1/flush"
INVOCATION_END_PATH = "/v1/invocation/end"
STATUS_PATH = "/v1/status"

# -- request headers ------------------------------------------------------------------
TOKEN_HEADER = "X-Kafka-Relay-Token"
REQUEST_ID_HEADER = "X-Kafka-Relay-Request-Id"
# One key per logical request: a retried POST with the same key gets the first answer
# (same ids) instead of being accepted twice.
IDEMPOTENCY_KEY_HEADER = "X-Kafka-Relay-Idempotency-Key"

# -- query parameters -----------------------------------------------------------------
WAIT_PARAM = "wait"
WAIT_DELIVERED = "delivered"
TIMEOUT_PARAM = "timeout_ms"

# -- response headers -----------------------------------------------------------------
RETRY_AFTER_HEADER = "Retry-After"  # on 429/503/507, seconds (the body also has retry_after_ms)

# -- refusals: why a batch was not accepted (the answer's "refusal" field) --------------
REFUSAL_FIELD = "refusal"
MAX_TIMEOUT_MS = 900_000  # Lambda's longest invocation: a longer ``timeout_ms`` is a 400


class Refusal(str, Enum):
    """Why nothing of a batch was accepted; ``status`` is the HTTP answer."""

    BUSY = "buffer_full"  # 429: the buffer is full now; retry after Retry-After
    TOO_LARGE = "too_large"  # 413: the batch alone is over a limit; it can never fit
    STORAGE = "storage"  # 507: the journal or the disk spool cannot write; retry later
    CLOSED = "closed"  # 503: shutting down (or the pump stopped): accepts nothing more
    NOT_RESTORED = "not_restored"  # 503: SnapStart, before the snapshot is restored

    @property
    def status(self) -> int:
        return _REFUSAL_STATUS[self]


_REFUSAL_STATUS = {Refusal.BUSY: 429, Refusal.TOO_LARGE: 413, Refusal.STORAGE: 507,
                   Refusal.CLOSED: 503, Refusal.NOT_RESTORED: 503}

# -- media types ----------------------------------------------------------------------
JSON_TYPE = "application/json"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
FRAMES_TYPE = "application/vnd.kafka-relay.frames.v1"  # see "The framed body" below

# -- Kafka headers the relay adds to every record (and to dead-lettered ones) ---------
RELAY_HEADER_PREFIX = "x-relay-"
ID_HEADER = "x-relay-id"
ERROR_HEADER = "x-relay-error"
ORIGINAL_TOPIC_HEADER = "x-relay-original-topic"
ATTEMPTS_HEADER = "x-relay-attempts"
REQUEST_ID_KAFKA_HEADER = "x-relay-request-id"
FIRST_FAILED_HEADER = "x-relay-first-failed-ms"
ERROR_KIND_HEADER = "x-relay-error-kind"  # transient (retries ran out) or permanent
FUNCTION_HEADER = "x-relay-function"  # AWS_LAMBDA_FUNCTION_NAME of the accepting function
SPILLED_TO_HEADER = "x-relay-spilled-to"  # on a DLQ pointer: where its oversize record is
# What a DLQ record carries beyond the record's own headers and x-relay-id.
DLQ_HEADERS = (ERROR_HEADER, ERROR_KIND_HEADER, ORIGINAL_TOPIC_HEADER, ATTEMPTS_HEADER,
               REQUEST_ID_KAFKA_HEADER, FIRST_FAILED_HEADER, FUNCTION_HEADER, SPILLED_TO_HEADER)


class Outcome(str, Enum):
    """Where a record is, as the API reports it."""

    DELIVERED = "delivered"  # on its topic
    DEAD_LETTERED = "dead_lettered"  # on the DLQ, with the x-relay-* headers
    SPILLED = "spilled"  # in S3, the /tmp spool or KAFKA_RELAY_SPILL log lines
    PENDING = "pending"  # still owned by the extension (not settled within the wait)
    FAILED = "failed"  # only the direct fallback: not produced, the caller still owns it

    @property
    def settled(self) -> bool:
        return self in (Outcome.DELIVERED, Outcome.DEAD_LETTERED, Outcome.SPILLED)


class BrokerState(str, Enum):
    UNKNOWN = "unknown"  # nothing heard yet
    UP = "up"  # the last delivery succeeded
    DEGRADED = "degraded"  # transient errors: records wait and are retried
    DOWN = "down"  # flushes fail: invocations stop waiting for the broker


# -- errors ---------------------------------------------------------------------------


class RelayError(Exception):
    """Base of every kafka-relay error, on both sides of the handoff.

    ``lambda_error_type`` is what the Extensions API receives in
    ``Lambda-Extension-Function-Error-Type`` on init/exit errors.
    """

    lambda_error_type = "Extension.Error"


class RelayUnavailable(RelayError):
    """No kafka-relay extension is listening (layer not attached, or it failed to start)."""


class RecordRejected(RelayError):
    """The extension refused the request; nothing in it was accepted. ``reasons`` says why."""

    def __init__(self, message: str, reasons: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.reasons = reasons


class RelayBusy(RelayError):
    """The extension's buffer stayed full (429) or it is shutting down (503); nothing accepted."""


class RelayShuttingDown(RelayBusy):
    """The extension is shutting down (503) and accepts no more records; nothing accepted."""


class RelayNotRestored(RelayBusy):
    """SnapStart: records were sent before the snapshot was restored (during init); nothing
    accepted. Send them from the handler."""


class RelayStorageUnavailable(RelayBusy):
    """The extension could not write the batch to disk (its crash journal or its outage
    spool is full or failing: 507); nothing accepted. It clears by itself when writing
    works again."""


class BatchTooLarge(RecordRejected):
    """The batch alone is over a limit of the extension (413): it can never be accepted as
    it is, so it is not retried. Send smaller batches (``reasons`` names the limit)."""


class BrokerUnavailable(RelayError):
    """``wait=True`` while the extension cannot reach Kafka (its circuit breaker is open): the
    extension refuses at once (503, the reason under ``BROKER_FIELD``); nothing accepted."""


#: In a 503 answer to a ``wait`` request: why the broker is not answering.
BROKER_FIELD = "broker"


# -- the framed body (FRAMES_TYPE): records already encoded, no JSON to parse -----------
#
# body    := "KRF" 0x01, u32 record count, records, nothing after the last record
# record  := flags u8, topic length u16, key length u32, value length u32, header count u16,
#            timestamp_ms u64, then topic, key and value bytes, then the headers
# header  := name length u16, value length u32, name bytes (UTF-8), value bytes
# All integers little-endian. A length whose flag is off must be 0. The value is the bytes
# as they go to Kafka (the client encodes a JSON ``value`` once; raw bytes pass through).

FRAMES_MAGIC = b"KRF\x01"
FLAG_KEY = 1  # a key (else null)
FLAG_VALUE_NULL = 2  # a null value (a tombstone)
FLAG_TIMESTAMP = 4  # timestamp_ms given (else the producer's time)
FLAG_TOPIC = 8  # a topic (else the extension's default topic)
FRAME_FLAGS = FLAG_KEY | FLAG_VALUE_NULL | FLAG_TIMESTAMP | FLAG_TOPIC  # every flag of v1
FRAMES_HEAD = struct.Struct("<4sI")  # body: magic, record count
FRAME_RECORD = struct.Struct("<BHIIHQ")  # record: flags, lengths, header count, timestamp
FRAME_HEADER = struct.Struct("<HI")  # header: name and value lengths
_RECORD_FIELDS = frozenset({"topic", "key", "value", "value_b64", "headers", "timestamp_ms"})
_MAX_TIMESTAMP_MS = 2**63  # exclusive: Kafka timestamps are int64 epoch milliseconds

class FrameError(ValueError):
    """A record that cannot be framed or a body that cannot be read; ``index`` -1: the body."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason if index < 0 else f"record {index}: {reason}")
        self.index = index
        self.reason = reason


def _value_chunks() -> Callable[[Any, int], list[str]]:
    """JSON text (as chunks to join) of a value as the extension's JSON path writes it:
    compact, UTF-8, no NaN. The C encoder is made once: ``JSONEncoder.encode`` builds a new
    one per call, which costs more than encoding a small value. Without a circularity
    check a cycle is a RecursionError."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def portable(value: Any, _level: int) -> list[str]:
        return [encoder.encode(value)]

    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return portable
    try:
        scan: Callable[[Any, int], list[str]] = make(
            None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False,
            False, False)
    except TypeError:  # another signature: the public path is still correct
        return portable
    return scan


_chunks = _value_chunks()
_FAST_FIELDS = _RECORD_FIELDS - {"value_b64"}
_JSON_VALUES = frozenset({dict, list, str, int, float, bool})


def encode_value(value: Any) -> bytes:
    """The bytes of a JSON ``value`` as they go to Kafka."""
    return "".join(_chunks(value, 0)).encode()


def encode_frames(records: Iterable[Mapping[str, Any]]) -> bytes:
    """A framed body of records given as the JSON API's objects (``value`` may also be bytes:
    sent as they are). Raises FrameError naming the first record that cannot be sent."""
    parts: list[bytes] = [b""]
    pack = FRAME_RECORD.pack
    chunks = _chunks
    # A batch names a few topics and header sets many times: each is checked and encoded
    # once per body. Keys are exact types (a header set is keyed by its items).
    topics: dict[str, bytes] = {}
    header_blocks: dict[tuple[tuple[Any, Any], ...], tuple[int, bytes]] = {}
    index = -1
    for index, item in enumerate(records):  # the last index counts the records
        # The usual record, inline: this runs per record and should cost little more than
        # json.dumps of its value. Anything unusual (a null value, value_b64) or wrong goes
        # the general way, which explains what is wrong.
        if type(item) is dict and _FAST_FIELDS.issuperset(item):
            value = item.get("value")
            try:
                if type(value) in _JSON_VALUES:
                    value = "".join(chunks(value, 0)).encode()
                elif type(value) is not bytes:
                    raise TypeError
                key = item.get("key")
                if type(key) is str:
                    key = key.encode()
                    flags = FLAG_KEY
                elif key is None:
                    key = b""
                    flags = 0
                elif type(key) is bytes:
                    flags = FLAG_KEY
                else:
                    raise TypeError
                if len(item) - ("key" in item) == 1:  # a value, and a key or none: no more
                    parts += (pack(flags, 0, len(key), len(value), 0, 0), key, value)
                    continue
                topic = item.get("topic")
                headers = item.get("headers")
                timestamp = item.get("timestamp_ms")
                if topic is None:
                    topic = b""
                elif type(topic) is str:
                    encoded = topics.get(topic)
                    if encoded is None:
                        encoded = topics[topic] = topic.encode()
                    topic = encoded
                    flags |= FLAG_TOPIC
                else:
                    raise TypeError
                if timestamp is None:
                    timestamp = 0
                elif type(timestamp) is int and 0 < timestamp < _MAX_TIMESTAMP_MS:
                    flags |= FLAG_TIMESTAMP
                else:
                    raise TypeError
                header_count, block = 0, b""
                if headers:
                    if type(headers) is not dict:
                        raise TypeError
                    shape = tuple(headers.items())
                    cached = header_blocks.get(shape)
                    if cached is None:
                        header_parts = _frame_headers(headers, index)
                        cached = header_blocks[shape] = (len(header_parts) // 3,
                                                         b"".join(header_parts))
                    header_count, block = cached
                parts += (pack(flags, len(topic), len(key), len(value), header_count,
                               timestamp), topic, key, value, block)
                continue
            except (ValueError, TypeError, RecursionError, struct.error, FrameError):
                pass
        parts += _frame(item, index)
    parts[0] = FRAMES_HEAD.pack(FRAMES_MAGIC, index + 1)
    return b"".join(parts)


def _frame(item: Mapping[str, Any], index: int) -> list[bytes]:
    """One record's frame (header, topic, key, value, headers), or FrameError."""
    if not isinstance(item, Mapping):
        raise FrameError(index, "a record must be an object (a mapping)")
    if not _RECORD_FIELDS.issuperset(item):
        raise FrameError(index, f"unknown field(s) {sorted(set(item) - _RECORD_FIELDS)}; "
                                f"allowed: {sorted(_RECORD_FIELDS)}")
    flags = 0
    topic = b""
    if (raw_topic := item.get("topic")) is not None:
        topic = _text(raw_topic, index, "'topic'")
        flags = FLAG_TOPIC
    key = b""
    if (raw_key := item.get("key")) is not None:
        key = _key_bytes(raw_key, index)
        flags |= FLAG_KEY
    value = _frame_value(item, index)
    if value is None:
        value = b""
        flags |= FLAG_VALUE_NULL
    timestamp = item.get("timestamp_ms")
    if timestamp is not None:
        if type(timestamp) is not int or not 0 < timestamp < _MAX_TIMESTAMP_MS:
            # librdkafka reads 0 as "now": it could not arrive as given.
            raise FrameError(index, "'timestamp_ms' must be an integer from 1 to 2**63-1 "
                                    "(epoch milliseconds); 0 cannot be produced (librdkafka "
                                    "reads it as 'now'): omit it for the producer's time")
        flags |= FLAG_TIMESTAMP
    headers = item.get("headers")
    header_parts = _frame_headers(headers, index) if headers else []
    try:
        head = FRAME_RECORD.pack(flags, len(topic), len(key), len(value),
                                 len(header_parts) // 3, timestamp or 0)
    except struct.error as exc:
        raise FrameError(index, f"a field is too long to frame ({exc})") from None
    return [head, topic, key, value, *header_parts]


def _text(text: Any, index: int, what: str) -> bytes:
    if type(text) is not str:
        raise FrameError(index, f"{what} must be a string")
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise FrameError(index, f"{what} is not valid Unicode text (a lone surrogate such as "
                                "\\ud800): send UTF-8 text, or bytes") from None


def _key_bytes(key: Any, index: int) -> bytes:
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    return _text(key, index, "'key'")


def _frame_value(item: Mapping[str, Any], index: int) -> bytes | None:
    if "value_b64" in item:
        encoded = item["value_b64"]
        if "value" in item or not isinstance(encoded, str):
            raise FrameError(index, "give exactly one of 'value' (any JSON, or bytes) or "
                                    "'value_b64' (a base64 string)")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FrameError(index, f"'value_b64' is not valid base64: {exc}") from None
    if "value" not in item:
        raise FrameError(index, "give exactly one of 'value' (any JSON, or bytes) or "
                                "'value_b64' (a base64 string)")
    value = item["value"]
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        return encode_value(value)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise FrameError(index, _value_problem(exc)) from None


def _value_problem(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "'value' is nested too deeply or refers to itself"
    if isinstance(exc, UnicodeEncodeError):
        return ("'value' is not valid Unicode text (a lone surrogate such as \\ud800): send "
                "UTF-8 text, or bytes")
    if isinstance(exc, TypeError):
        return f"'value' is not JSON: {exc}; send JSON types, or bytes"
    return ("'value' holds a number JSON cannot carry (NaN, Infinity or out of range): send "
            "finite numbers")


def _frame_headers(headers: Any, index: int) -> list[bytes]:
    if not isinstance(headers, Mapping):
        raise FrameError(index, "'headers' must be an object of string to string")
    out: list[bytes] = []
    pack = FRAME_HEADER.pack
    for name, value in headers.items():
        name_bytes = _text(name, index, "'headers' name")
        if b"\x00" in name_bytes:  # a C string to librdkafka: it would arrive cut short
            raise FrameError(index, f"'headers' name {name[:64]!r} holds a NUL character, "
                                    "which the producer cannot carry in a header name")
        if isinstance(value, (bytes, bytearray, memoryview)):
            value_bytes = bytes(value)
        else:
            value_bytes = _text(value, index, f"'headers' value of {name!r}")
        try:
            out += (pack(len(name_bytes), len(value_bytes)), name_bytes, value_bytes)
        except struct.error as exc:
            raise FrameError(index, f"header {name!r} is too long to frame ({exc})") from None
    if len(out) // 3 > 0xFFFF:
        raise FrameError(index, f"{len(out) // 3} headers: at most 65535 per record")
    return out
