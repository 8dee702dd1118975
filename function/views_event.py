"""The Lambda Kafka event source mapping's event, both shapes, as typed records.

Amazon MSK (``eventSource: aws:kafka``, with ``eventSourceArn``) and self-managed Kafka
(``eventSource: SelfManagedKafka``) deliver the same body::

    {"eventSource": "...", "bootstrapServers": "b1:9092,b2:9092",
     "records": {"<topic>-<partition>": [
         {"topic", "partition", "offset", "timestamp", "timestampType",
          "key": base64, "value": base64, "headers": [{"name": [byte ints]}]}]}}

A record that cannot be decoded (bad base64, header bytes out of range, missing
topic/partition/offset) is returned as a :class:`Malformed` entry instead of failing the
whole batch: the consumer quarantines it and carries on. Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MSK = "aws:kafka"
SELF_MANAGED = "SelfManagedKafka"
EVENT_SOURCES = (MSK, SELF_MANAGED)


class EventFormatError(ValueError):
    """The event is not a Kafka event source mapping batch at all."""


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def group(self) -> str:
        """``topic-partition``: the record's key in the event's ``records`` map."""
        return f"{self.topic}-{self.partition}"

    def item_identifier(self) -> dict[str, Any]:
        """The record in a partial batch response: AWS's Kafka item identifier names the
        partition by its ``records`` map key (``"<topic>-<partition>"``), not its number."""
        return {"partition": self.group, "offset": self.offset}

    @property
    def position(self) -> str:
        """``topic-partition-offset``: unique per record in a cluster."""
        return f"{self.topic}-{self.partition}-{self.offset}"

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text (Kafka allows repeats)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value.decode("utf-8", errors="replace")
        return found

    @property
    def identity(self) -> str:
        """The relay's ``x-relay-id`` when present, else the record's position."""
        return self.header("x-relay-id") or self.position


@dataclass(frozen=True)
class Malformed:
    """A record entry that could not be decoded, with what is known about where it was."""

    topic: str
    partition: int
    offset: int
    reason: str
    raw: Any


@dataclass(frozen=True)
class KafkaBatch:
    source: str  # aws:kafka | SelfManagedKafka
    records: tuple[KafkaRecord, ...]
    malformed: tuple[Malformed, ...]
    event_source_arn: str | None = None
    bootstrap_servers: str | None = None


def _b64(value: Any, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is a {type(value).__name__}, not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from exc


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError("headers is not a list")
    pairs: list[tuple[str, bytes]] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise ValueError(f"header entry {entry!r} is not an object")
        for name, data in entry.items():
            if not isinstance(data, list) or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in data
            ):
                raise ValueError(f"header {name!r} is not a list of byte values")
            pairs.append((str(name), bytes(data)))
    return tuple(pairs)


def _int(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is {value!r}, not an integer")
    return value


def _split_group(group: str) -> tuple[str, int]:
    topic, _, partition = group.rpartition("-")
    return topic, int(partition) if partition.isdigit() else -1


def parse_record(raw: Any, group: str) -> KafkaRecord | Malformed:
    fallback_topic, fallback_partition = _split_group(group)
    if not isinstance(raw, Mapping):
        return Malformed(fallback_topic, fallback_partition, -1, "record is not an object", raw)
    topic = raw.get("topic") if isinstance(raw.get("topic"), str) else fallback_topic
    partition = raw.get("partition")
    offset = raw.get("offset")
    where_partition = partition if isinstance(partition, int) else fallback_partition
    where_offset = offset if isinstance(offset, int) else -1
    try:
        return KafkaRecord(
            topic=str(topic),
            partition=_int(raw, "partition"),
            offset=_int(raw, "offset"),
            timestamp_ms=_int(raw, "timestamp"),
            timestamp_type=str(raw.get("timestampType") or "CREATE_TIME"),
            key=_b64(raw.get("key"), "key"),
            value=_b64(raw.get("value"), "value"),
            headers=_headers(raw.get("headers")),
        )
    except ValueError as exc:
        return Malformed(str(topic), int(where_partition), int(where_offset), str(exc), raw)


def parse_event(event: Any) -> KafkaBatch:
    """Both event shapes; records in the event's order (per partition: offset order)."""
    if not isinstance(event, Mapping):
        raise EventFormatError(f"the event is a {type(event).__name__}, not an object")
    source = event.get("eventSource")
    if source not in EVENT_SOURCES:
        raise EventFormatError(
            f"eventSource {source!r} is not a Kafka event source mapping "
            f"({' or '.join(EVENT_SOURCES)}): attach this function to an MSK or "
            "self-managed Kafka trigger"
        )
    groups = event.get("records")
    if not isinstance(groups, Mapping):
        raise EventFormatError("the event has no 'records' object keyed by topic-partition")
    records: list[KafkaRecord] = []
    malformed: list[Malformed] = []
    for group, entries in groups.items():
        for raw in entries if isinstance(entries, list) else [entries]:
            parsed = parse_record(raw, str(group))
            (records if isinstance(parsed, KafkaRecord) else malformed).append(parsed)  # type: ignore[arg-type]
    return KafkaBatch(
        source=str(source),
        records=tuple(records),
        malformed=tuple(malformed),
        event_source_arn=event.get("eventSourceArn"),
        bootstrap_servers=event.get("bootstrapServers"),
    )


def by_partition(records: tuple[KafkaRecord, ...]) -> Iterator[list[KafkaRecord]]:
    """Records grouped per topic-partition, each group in offset order."""
    groups: dict[tuple[str, int], list[KafkaRecord]] = {}
    for record in records:
        groups.setdefault((record.topic, record.partition), []).append(record)
    for key in sorted(groups):
        yield sorted(groups[key], key=lambda r: r.offset)


def to_event_record(record: KafkaRecord) -> dict[str, Any]:
    """The event-source-mapping JSON of one record (the inverse of :func:`parse_record`)."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "timestampType": record.timestamp_type,
        "key": None if record.key is None else base64.b64encode(record.key).decode(),
        "value": None if record.value is None else base64.b64encode(record.value).decode(),
        "headers": [{name: list(data)} for name, data in record.headers],
    }


def build_event(
    records: list[KafkaRecord], *, source: str = SELF_MANAGED, bootstrap: str = "",
    event_source_arn: str | None = None,
) -> dict[str, Any]:
    """An event-source-mapping batch in either shape (the local poller and tests use it)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(f"{record.topic}-{record.partition}", []).append(
            to_event_record(record)
        )
    event: dict[str, Any] = {"eventSource": source, "bootstrapServers": bootstrap,
                             "records": groups}
    if source == MSK:
        event["eventSourceArn"] = event_source_arn or (
            "arn:aws:kafka:us-east-1:123456789012:cluster/local/00000000-0000"
        )
    return event
