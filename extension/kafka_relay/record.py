"""The extension's own copy of an accepted record, kept until it reaches an outcome.

Delivery reports from librdkafka do not carry headers back, so this copy is
what retries, the dead-letter queue and spills are built from.
"""

from __future__ import annotations

import base64
import os
import threading
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

_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class IdSource:
    """Unique record ids: a random per-environment prefix and a counter (cheap, sortable).
    An id holds letters, digits, ``.``, ``_`` and ``-`` only: nothing JSON or a header
    escapes (the handoff's answer joins them as they are)."""

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is not None and not (prefix and _ID_CHARACTERS.issuperset(prefix)):
            raise ValueError(f"an id prefix is letters, digits, '.', '_' and '-': {prefix!r}")
        self._lock = threading.Lock()
        self._template = f"{prefix or os.urandom(6).hex()}-%08x"
        self._next = 1

    @property
    def prefix(self) -> str:
        return self._template[:-5]

    def take(self, count: int) -> list[str]:
        """``count`` new ids, drawn as one block: one lock round per batch, not one counter
        step and one f-string per record."""
        with self._lock:  # a prefix is never paired with the other prefix's counter
            template, first = self._template, self._next
            self._next = first + count
        return [template % n for n in range(first, first + count)]

    def reseed(self) -> str:
        """A fresh random prefix (after a restore from a snapshot, which every copy shares);
        the new prefix."""
        with self._lock:
            self._template, self._next = f"{os.urandom(6).hex()}-%08x", 1
        return self.prefix


class Record:
    """One accepted record. ``dlq_error`` set means it is on its way to the DLQ.

    What every record carries is a slot. What only a record that failed carries (attempts,
    errors, backoff, its DLQ routing) is read from the class defaults below until the
    delivery code sets it, which gives that record a ``__dict__`` of its own: a pending
    record holds 10 slots instead of 17 (40 B less), and building one is 10 stores.
    """

    __slots__ = (
        "__dict__",
        "accepted_ms",
        "dlq_topic",
        "headers",
        "id",
        "key",
        "request_id",
        "size",
        "timestamp_ms",
        "topic",
        "value",
    )

    attempts: int = 0
    first_failed_ms: int | None = None
    last_error: str | None = None
    not_before_ms: int = 0
    dlq_error: str | None = None
    # Set when routed to the DLQ: the attempts on its own topic (x-relay-attempts, the count
    # x-relay-error names) and transient/permanent; DLQ retries do not change them.
    dlq_attempts: int = 0
    error_kind: str | None = None

    def __init__(  # noqa: PLR0917 - the handoff passes them positionally: ~2x cheaper per record
        self,
        id: str,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
        timestamp_ms: int | None = None,
        request_id: str | None = None,
        accepted_ms: int = 0,
        dlq_topic: str | None = None,  # where it goes if it fails (KAFKA_DLQ_TOPIC at accept)
        size: int = -1,  # key + value + header bytes, when the caller knows them (-1: count)
    ) -> None:
        self.id = id
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self.request_id = request_id
        self.accepted_ms = accepted_ms
        self.dlq_topic = dlq_topic
        if size < 0:
            size = len(key or b"") + len(value or b"")
            if headers:  # most records have none: skip the generator
                size += sum(len(k) + len(v) for k, v in headers)
        self.size = size

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
        # Only what differs from the defaults: a record that never failed stays dict-free.
        if data.get("attempts"):
            record.attempts = int(data["attempts"])
        for name in ("error_kind", "first_failed_ms", "last_error", "dlq_error"):
            if data.get(name) is not None:
                setattr(record, name, data[name])
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
