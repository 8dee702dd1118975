"""Which DLQ records a redrive sends where, and how far it commits when one fails."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from kafka_relay.record import Record
from kafka_relay.tools.redrive import Filters, error_code, plan, redrive


@dataclass
class Message:
    """A consumed DLQ record, shaped like confluent-kafka's Message."""

    _headers: list[tuple[str, bytes]]
    _offset: int = 0
    _value: bytes = b"v"
    _ts: int = 1767225600000

    def topic(self) -> str:
        return "dlq.t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def error(self) -> None:
        return None


def _dead(record_id: str, error: str, kind: str | None, offset: int = 0) -> Message:
    record = Record(id=record_id, topic="t", key=None, value=b"v", headers=(("h", b"1"),))
    record.dlq_error, record.error_kind = error, kind
    record.attempts = 3
    headers = record.kafka_headers(dlq_topic="dlq.t", function="f")
    if kind is None:  # written before x-relay-error-kind existed
        headers = [(n, v) for n, v in headers if n != "x-relay-error-kind"]
    return Message(headers, offset)


def test_a_dead_letter_goes_home_with_only_its_own_headers_and_id() -> None:
    step = plan(_dead("a", "gave up after 3 attempts: _MSG_TIMED_OUT: x", "transient"),
                Filters())
    assert (step.topic, step.reason, step.headers) == (
        "t", "transient: _MSG_TIMED_OUT", [("h", b"1"), ("x-relay-id", b"a")])


def test_filters_and_old_dead_letters_without_a_kind() -> None:
    old = _dead("a", "gave up after 3 attempts: _MSG_TIMED_OUT: x", None)
    denied = _dead("b", "TOPIC_AUTHORIZATION_FAILED: denied", "permanent")
    assert plan(old, Filters(error_kind="transient")).topic == "t"
    assert plan(denied, Filters(error_kind="transient")).reason == \
        "filtered out: error kind permanent"
    assert plan(denied, Filters(match=re.compile("AUTHORIZATION"))).topic == "t"
    assert plan(denied, Filters(ids=frozenset({"a"}))).topic is None
    assert plan(Message([("x-relay-id", b"c")]), Filters()).topic is None
    assert error_code("dead-letter failed: gave up after 2 attempts: _TRANSPORT: down") == \
        "_TRANSPORT"


@dataclass
class Consumer:
    messages: list[Message]
    committed_offsets: list[TopicPartition] = field(default_factory=list)

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = type("T", (), {"partitions": {0: None}, "error": None})()
        return type("M", (), {"topics": {topic: meta}})()

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition, -1001) for p in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def poll(self, timeout: float) -> Any:
        if self.messages:
            return self.messages.pop(0)
        eof = KafkaError(KafkaError._PARTITION_EOF)
        return type("Eof", (), {"error": lambda _s: eof, "partition": lambda _s: 0})()

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.committed_offsets = offsets


@dataclass
class Producer:
    refuse: set[bytes]
    lose: bool = False
    sent: list[str] = field(default_factory=list)

    def produce(self, topic: str, **kwargs: Any) -> None:
        record_id = dict(kwargs["headers"])["x-relay-id"]
        self.sent.append(record_id.decode())
        if not self.lose:
            error = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED) \
                if record_id in self.refuse else None
            kwargs["on_delivery"](error, None)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return len(self.sent) if self.lose else 0


def _three() -> list[Message]:
    return [_dead(n, "TOPIC_AUTHORIZATION_FAILED: denied", "permanent", offset)
            for offset, n in enumerate("abc")]


def test_a_failed_record_stops_the_commit_there_so_the_next_run_retries_it() -> None:
    consumer, producer = Consumer(_three()), Producer(refuse={b"b"})
    report = redrive(consumer, "dlq.t", filters=Filters(), producer=producer, group="g")
    assert (report.produced, report.failed, producer.sent) == (2, 1, ["a", "b", "c"])
    assert [(tp.partition, tp.offset) for tp in consumer.committed_offsets] == [(0, 1)]


def test_missing_delivery_reports_commit_nothing_and_a_dry_run_neither() -> None:
    consumer = Consumer(_three())
    report = redrive(consumer, "dlq.t", filters=Filters(),
                     producer=Producer(set(), lose=True), group="g")
    assert (report.failed, consumer.committed_offsets) == (3, [])
    dry = Consumer(_three())
    report = redrive(dry, "dlq.t", filters=Filters(), producer=None, group="g")
    assert (report.read, dry.committed_offsets) == (3, [])


def test_the_rate_spaces_the_produces() -> None:
    clock, naps = [0.0], []

    def sleep(seconds: float) -> None:
        naps.append(round(seconds, 3))
        clock[0] += seconds

    redrive(Consumer(_three()), "dlq.t", filters=Filters(), producer=Producer(set()),
            group="g", rate=4, sleep=sleep, monotonic=lambda: clock[0])
    assert naps == [0.25, 0.25]
