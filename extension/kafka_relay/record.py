"""The extension's own copy of an accepted record, kept until it reaches an outcome.

Delivery reports from librdkafka do not carry headers back, so this copy is
what retries, the dead-letter queue and spills are built from.
"""

from __future__ import annotations

import base64
import itertools
import os
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from kafka_relay.protocol import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    ERROR_KIND_HEADER,
    FIRST_FAILED_HEADER,
    FUNCTION_HEADER,
    ID_HEADER,
    ORIGINAL_TOPIC_HEADER,
    REQUEST_ID_KAFKA_HEADER,
)


class IdSource:
    """Unique record ids: a random per-environment prefix and a counter (cheap, sortable)."""

    def __init__(self, prefix: str | None = None) -> None:
        # One attribute, swapped whole by reseed: an id never pairs a prefix with the
        # other prefix's counter.
        self._seed = (prefix or os.urandom(6).hex(), itertools.count(1))

    @property
    def prefix(self) -> str:
        return self._seed[0]

    def next(self) -> str:
        prefix, counter = self._seed
        return f"{prefix}-{next(counter):08x}"

    def reseed(self) -> str:
        """A fresh random prefix (after a restore from a snapshot, which every copy shares);
        the new prefix."""
        self._seed = (os.urandom(6).hex(), itertools.count(1))
        return self._seed[0]


class Record:
    """One accepted record. ``dlq_error`` set means it is on its way to the DLQ."""

    __slots__ = (
        "accepted_ms",
        "attempts",
        "dlq_attempts",
        "dlq_error",
        "dlq_topic",
        "error_kind",
        "first_failed_ms",
        "headers",
        "id",
        "key",
        "last_error",
        "not_before_ms",
        "request_id",
        "size",
        "timestamp_ms",
        "topic",
        "value",
    )

    def __init__(
        self,
        *,
        id: str,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
        timestamp_ms: int | None = None,
        request_id: str | None = None,
        accepted_ms: int = 0,
        dlq_topic: str | None = None,
    ) -> None:
        self.id = id
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self.request_id = request_id
        self.accepted_ms = accepted_ms
        self.attempts = 0
        self.first_failed_ms: int | None = None
        self.last_error: str | None = None
        self.not_before_ms = 0
        self.dlq_error: str | None = None
        self.dlq_topic = dlq_topic  # where it goes if it fails (KAFKA_DLQ_TOPIC at accept)
        # Set when routed to the DLQ: the attempts on its own topic (x-relay-attempts, the
        # count x-relay-error names) and transient/permanent; DLQ retries do not change them.
        self.dlq_attempts = 0
        self.error_kind: str | None = None
        self.size = len(key or b"") + len(value or b"")
        if headers:  # most records have none: skip the generator
            self.size += sum(len(k) + len(v) for k, v in headers)

    def kafka_headers(self, *, dlq_topic: str | None = None,
                      function: str = "") -> list[tuple[str, bytes]]:
        """Headers as produced: the caller's, the relay id, and on the DLQ why it failed
        (``function``: the Lambda function that accepted it)."""
        out = [*self.headers, (ID_HEADER, self.id.encode())]
        if dlq_topic is not None:
            out += [
                (ERROR_HEADER, (self.dlq_error or "").encode()),
                (ERROR_KIND_HEADER, (self.error_kind or "permanent").encode()),
                (ORIGINAL_TOPIC_HEADER, self.topic.encode()),
                (ATTEMPTS_HEADER, str(self.dlq_attempts or self.attempts).encode()),
                (REQUEST_ID_KAFKA_HEADER, (self.request_id or "").encode()),
                (FIRST_FAILED_HEADER, str(self.first_failed_ms or 0).encode()),
                (FUNCTION_HEADER, function.encode()),
            ]
        return out

    def spill_json(self) -> str:
        """One JSON object (no newline) that replay turns back into the same Kafka record.

        Built by hand, not with json.dumps of a dict: at SHUTDOWN this runs for every pending
        record within 2 s, and this is ~2x faster. Strings are escaped by the json module's own
        ASCII encoder; bytes are base64 (JSON-safe)."""
        headers = ",".join(f'{_q(name)}:"{_b64text(value)}"' for name, value in self.headers)
        return (f'{{"id":{_q(self.id)},"topic":{_q(self.topic)},"key_b64":{_b64json(self.key)},'
                f'"value_b64":{_b64json(self.value)},"headers":{{{headers}}},'
                f'"timestamp_ms":{_int_json(self.timestamp_ms)},'
                f'"request_id":{_str_json(self.request_id)},"attempts":{int(self.attempts)},'
                f'"first_failed_ms":{_int_json(self.first_failed_ms)},'
                f'"last_error":{_str_json(self.last_error)},"dlq_error":{_str_json(self.dlq_error)},'
                f'"error_kind":{_str_json(self.error_kind)},"dlq_topic":{_str_json(self.dlq_topic)},'
                f'"accepted_ms":{int(self.accepted_ms)}}}')

    @classmethod
    def from_spill(cls, data: dict[str, Any]) -> Record:
        record = cls(
            id=str(data["id"]),
            topic=str(data["topic"]),
            key=_unb64(data.get("key_b64")),
            value=_unb64(data.get("value_b64")),
            headers=tuple(
                (str(k), base64.b64decode(v)) for k, v in (data.get("headers") or {}).items()
            ),
            timestamp_ms=data.get("timestamp_ms"),
            request_id=data.get("request_id"),
            accepted_ms=int(data.get("accepted_ms") or 0),
            dlq_topic=data.get("dlq_topic"),
        )
        record.attempts = int(data.get("attempts") or 0)
        record.error_kind = data.get("error_kind")
        record.first_failed_ms = data.get("first_failed_ms")
        record.last_error = data.get("last_error")
        record.dlq_error = data.get("dlq_error")
        return record


def _b64text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64json(data: bytes | None) -> str:
    return "null" if data is None else f'"{_b64text(data)}"'


def _str_json(text: str | None) -> str:
    return "null" if text is None else _q(text)


def _int_json(number: int | None) -> str:
    return "null" if number is None else str(int(number))


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
