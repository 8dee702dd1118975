"""Redrive a dead-letter topic: ``kafka-relay-replay --from-topic dlq.<topic>``.

Each record on the DLQ goes back to its ``x-relay-original-topic`` with its own
key, value, timestamp, headers and ``x-relay-id``; the DLQ's headers (why it
failed, attempts, …) are stripped. Filters choose which records go: error kind,
a pattern on ``x-relay-error``, ids, a time range. Progress is the consumer
group's committed offsets (one group per topic and filter set, named in the
output), committed only past records that were produced or passed over, so a
second run continues where the first stopped and duplicates nothing. DLQ
pointers of oversize records (``x-relay-spilled-to``) are never redriven: their
record is replayed from where it was spilled. ``--rate`` paces the produces;
``--dry-run`` reads without producing or committing and counts by reason.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from kafka_relay.config import Config
from kafka_relay.producer.classify import describe
from kafka_relay.producer.factory import ProducerFactory
from kafka_relay.protocol import (
    DLQ_HEADERS,
    ERROR_HEADER,
    ERROR_KIND_HEADER,
    FIRST_FAILED_HEADER,
    ID_HEADER,
    ORIGINAL_TOPIC_HEADER,
    SPILLED_TO_HEADER,
)

_MAX_SHOWN = 20
_FLUSH_SLACK_S = 5.0


class Message(Protocol):
    """What is read of a consumed DLQ record (confluent-kafka's Message)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Filters:
    error_kind: str | None = None
    match: re.Pattern[str] | None = None
    ids: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def key(self) -> str:
        """A short stable digest: each filter set has its own consumer group (progress)."""
        text = repr((self.error_kind, self.match.pattern if self.match else None,
                     sorted(self.ids), self.since_ms, self.until_ms))
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def any(self) -> bool:
        return self != Filters()


@dataclass(frozen=True)
class Plan:
    """What to do with one DLQ record: ``topic`` None means pass it over, for ``reason``."""

    topic: str | None
    reason: str
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _text(headers: Mapping[str, bytes], name: str) -> str:
    return headers.get(name, b"").decode("utf-8", "replace")


def plan(message: Message, filters: Filters) -> Plan:
    """Where a DLQ record goes, or why it stays (a pure function of the record)."""
    raw = message.headers() or []
    headers = dict(raw)
    original = _text(headers, ORIGINAL_TOPIC_HEADER)
    error = _text(headers, ERROR_HEADER)
    kind = _text(headers, ERROR_KIND_HEADER) or (
        "transient" if error.startswith("gave up after") else "permanent")
    if SPILLED_TO_HEADER in headers:
        return Plan(None, f"a pointer: replay its record from {_text(headers, SPILLED_TO_HEADER)}")
    if not original or ID_HEADER not in headers:
        return Plan(None, "not a kafka-relay dead letter (no x-relay-original-topic / x-relay-id)")
    if filters.error_kind and kind != filters.error_kind:
        return Plan(None, f"filtered out: error kind {kind}")
    if filters.match and not filters.match.search(error):
        return Plan(None, "filtered out: x-relay-error does not match")
    if filters.ids and _text(headers, ID_HEADER) not in filters.ids:
        return Plan(None, "filtered out: id")
    failed_ms = _text(headers, FIRST_FAILED_HEADER)
    when = int(failed_ms) if failed_ms.isdigit() and int(failed_ms) else message.timestamp()[1]
    if (filters.since_ms is not None and when < filters.since_ms) or (
            filters.until_ms is not None and when >= filters.until_ms):
        return Plan(None, "filtered out: time")
    kept = [(name, value) for name, value in raw if name not in DLQ_HEADERS]
    return Plan(original, f"{kind}: {error_code(error)}", kept)


_NOT_THE_CODE = re.compile(r"^(dead-letter failed: )?(gave up after \d+ attempts: )?")


def error_code(error: str) -> str:
    """``gave up after 3 attempts: _MSG_TIMED_OUT: Local: …`` → ``_MSG_TIMED_OUT``."""
    return _NOT_THE_CODE.sub("", error).split(":", 1)[0].strip() or "unknown"


@dataclass
class RedriveReport:
    group: str
    read: int = 0
    produced: int = 0
    failed: int = 0
    by_plan: Counter[tuple[str, str]] = field(default_factory=Counter)  # (to, reason)
    failures: list[str] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)  # partition -> next offset

    @property
    def ok(self) -> bool:
        return self.failed == 0


class ProducerLike(Protocol):
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


def redrive(
    consumer: Any,
    dlq: str,
    *,
    filters: Filters,
    producer: ProducerLike | None,
    group: str,
    rate: float | None = None,
    timeout_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> RedriveReport:
    """Read ``dlq`` from the group's committed offsets to its end as of now, produce what the
    filters select (``producer`` None: a dry run), then commit past what is done."""
    report = RedriveReport(group)
    # Per partition: the offsets passed over or produced, and the first one that failed.
    done: dict[int, int] = {}
    first_failed: dict[int, int] = {}

    def delivered(partition: int, offset: int, record_id: str, topic: str,
                  error: KafkaError | None, _msg: object) -> None:
        if error is None:
            report.produced += 1
            return
        report.failed += 1
        first_failed[partition] = min(first_failed.get(partition, offset), offset)
        if len(report.failures) < _MAX_SHOWN:
            report.failures.append(f"{record_id} → {topic}: {describe(error)}")

    started, sent = monotonic(), 0
    for message in _read_to_end(consumer, dlq):
        partition, offset = int(message.partition() or 0), int(message.offset() or 0)
        report.read += 1
        step = plan(message, filters)
        report.by_plan[(step.topic or "(stays on the DLQ)", step.reason)] += 1
        done[partition] = offset
        if step.topic is None or producer is None:
            continue
        if rate:
            wait = started + sent / rate - monotonic()
            if wait > 0:
                sleep(wait)
        sent += 1
        record_id = dict(message.headers() or []).get(ID_HEADER, b"").decode()
        callback = _callback(delivered, partition, offset, record_id, step.topic)
        try:
            producer.produce(step.topic, key=message.key(), value=message.value(),
                             headers=step.headers, timestamp=message.timestamp()[1],
                             on_delivery=callback)
        except (KafkaException, BufferError) as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            callback(error or KafkaError(KafkaError._FAIL, str(exc)), None)
        producer.poll(0)
    if producer is None:
        return report
    unsent = producer.flush(timeout_s + _FLUSH_SLACK_S)
    if unsent:
        report.failed += unsent
        report.failures.append(f"{unsent} records got no delivery report in {timeout_s:g} s")
        return report  # which ones is unknown: commit nothing, the next run redoes them
    offsets = [TopicPartition(dlq, p, first_failed.get(p, last + 1)) for p, last in done.items()]
    if offsets:
        consumer.commit(offsets=offsets, asynchronous=False)
        report.committed = {tp.partition: tp.offset for tp in offsets}
    return report


def _callback(delivered: Callable[..., None], *args: Any) -> Callable[[KafkaError | None, object],
                                                                      None]:
    return lambda error, msg: delivered(*args, error, msg)


def _read_to_end(consumer: Any, topic: str, *, poll_s: float = 0.5,
                 idle_s: float = 10.0) -> Iterable[Message]:
    """Every record after the group's committed offsets, until each partition reports its
    end (partition EOF: the fetch's high watermark; ListOffsets is not asked, as some
    brokers answer it in batches rather than records)."""
    try:
        metadata = consumer.list_topics(topic, timeout=10)
    except KafkaException as exc:
        raise RedriveError(f"cannot read {topic!r}: {describe(exc.args[0])}; check --bootstrap "
                           "(or KAFKA_BOOTSTRAP_SERVERS) and the KAFKA_AUTH settings") from exc
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise RedriveError(f"topic {topic!r} does not exist on this cluster")
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]
    committed = consumer.committed(partitions, timeout=10)
    consumer.assign([TopicPartition(topic, tp.partition,
                                    tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                     for tp in committed])
    open_partitions = {tp.partition for tp in committed}
    last_news = time.monotonic()
    while open_partitions and time.monotonic() - last_news < idle_s:
        message = consumer.poll(poll_s)
        if message is None:
            continue
        last_news = time.monotonic()
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise RedriveError(f"reading {topic!r} failed: {error}")
            open_partitions.discard(int(message.partition() or 0))
            continue
        yield message


class RedriveError(Exception):
    """The DLQ cannot be read; the message says why."""


def default_group(dlq: str, filters: Filters) -> str:
    suffix = f".{filters.key()}" if filters.any else ""
    return f"kafka-relay-redrive.{dlq}{suffix}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The redrive options of ``kafka-relay-replay``."""
    group = parser.add_argument_group("redrive a dead-letter topic (--from-topic)")
    group.add_argument("--from-topic", metavar="DLQ",
                       help="redrive this dead-letter topic: each record back to its "
                            "x-relay-original-topic")
    group.add_argument("--error-kind", choices=["transient", "permanent"],
                       help="only records whose x-relay-error-kind is this")
    group.add_argument("--match", metavar="REGEX", help="only records whose x-relay-error "
                                                        "matches REGEX")
    group.add_argument("--id", action="append", default=[], metavar="X_RELAY_ID",
                       help="only this x-relay-id (repeatable)")
    group.add_argument("--group", help="the consumer group that keeps the progress (default "
                                       "kafka-relay-redrive.<DLQ>[.<filters digest>])")
    group.add_argument("--rate", type=float, metavar="RECORDS_PER_S",
                       help="produce at most this many records a second")


def consumer_for(config: Config, group: str) -> Any:
    """A consumer with the extension's connection settings (security, credentials)."""
    settings = ProducerFactory(config).settings
    connection = {k: v for k, v in settings.items()
                  if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client."))}
    return Consumer({**connection, "group.id": group, "enable.auto.commit": False,
                     "enable.partition.eof": True, "auto.offset.reset": "earliest"})


def print_report(report: RedriveReport, dlq: str, *, dry_run: bool, out: TextIO) -> None:
    out.write(f"read {report.read} records from {dlq} (consumer group {report.group})\n")
    for (to, why), count in sorted(report.by_plan.items()):
        out.write(f"  {count:>6}  → {to}  ({why})\n")
    if dry_run:
        out.write("dry run: nothing produced, no offsets committed\n")
        return
    out.write(f"produced {report.produced}, failed {report.failed}\n")
    for failure in report.failures:
        out.write(f"  failed: {failure}\n")
    for partition, offset in sorted(report.committed.items()):
        out.write(f"committed {dlq}[{partition}] at offset {offset}: the next run starts there\n")
