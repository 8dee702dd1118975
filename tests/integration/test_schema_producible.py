"""Every record the handoff validation accepts (JSON or framed body) is produced by the real
confluent-kafka producer and arrives on the real broker field for field: topic, key, value,
every header (name and bytes, in order) and the timestamp given. Records the producer would
change (timestamp 0, a NUL in a header name) are refused instead."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kafka_relay.handoff.schema import InvalidRequest, records_from_body
from kafka_relay.protocol import FRAMES_TYPE, ID_HEADER, JSON_TYPE, FrameError, encode_frames
from kafka_relay.record import Record
from tests.conftest import Broker
from tests.record_strategies import bodies, plausible_items

_ids = itertools.count()
_TOPICS = ["schema.prop.a", "schema.prop.b"]
Arrived = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], int]


@pytest.fixture(scope="module")
def producer(broker: Broker) -> Iterator[Producer]:
    for name in _TOPICS:
        broker.create_topic(name)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 15_000})
    yield producer
    producer.flush(10)


@pytest.fixture(scope="module")
def consumer(broker: Broker, producer: Producer) -> Iterator[Consumer]:
    # At the log's end a fetch waits up to fetch.wait.max.ms (500 ms by default) before what
    # arrived meanwhile is seen: each example's records are read within milliseconds instead.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "enable.auto.commit": False,
                         "group.id": f"schema-prop-{time.monotonic_ns()}",
                         "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in _TOPICS])
    yield consumer
    consumer.close()


def _arrived(consumer: Consumer, ids: set[str], timeout_s: float = 20) -> dict[str, Arrived]:
    """What the broker holds for ``ids``, keyed by x-relay-id."""
    found: dict[str, Arrived] = {}
    deadline = time.monotonic() + timeout_s
    while ids - found.keys() and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        headers = [(str(h[0]), h[1] if isinstance(h[1], bytes) else b"")
                   for h in msg.headers() or []]
        relay_id = dict(headers).get(ID_HEADER, b"").decode()
        found[relay_id] = (str(msg.topic()), msg.key(), msg.value(), headers,
                           int(msg.timestamp()[1]))
    return found


def _produce_and_compare(producer: Producer, consumer: Consumer, records: list[Record]) -> None:
    reports: list[KafkaError | None] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        reports.append(error)

    for record in records:
        headers: list[tuple[str, str | bytes | None]] = [*record.kafka_headers()]
        producer.produce(record.topic, record.value, record.key, headers=headers,
                         timestamp=record.timestamp_ms or 0, on_delivery=on_delivery)
    assert producer.flush(20) == 0
    assert reports == [None] * len(records)
    arrived = _arrived(consumer, {r.id for r in records})
    for record in records:
        topic, key, value, got_headers, timestamp = arrived[record.id]
        assert (topic, key, value) == (record.topic, record.key, record.value)
        assert got_headers == [*record.headers, (ID_HEADER, record.id.encode())]
        if record.timestamp_ms is not None:
            assert timestamp == record.timestamp_ms


def _accepted(body: bytes, content_type: str) -> list[Record] | None:
    try:
        return records_from_body(body, content_type, default_topic=_TOPICS[0],
                                 new_ids=lambda n: [f"prop-{next(_ids)}" for _ in range(n)],
                                 request_id="req",
                                 now_ms=0)
    except InvalidRequest:
        event("rejected")
        return None  # the unit property tests check the reasons


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies(_TOPICS))
def test_every_accepted_json_record_arrives_field_for_field(
    producer: Producer, consumer: Consumer, body: bytes
) -> None:
    records = _accepted(body, JSON_TYPE)
    if records is not None:
        event("accepted")
        _produce_and_compare(producer, consumer, records)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(plausible_items(_TOPICS), min_size=1, max_size=4))
def test_every_accepted_framed_record_arrives_field_for_field(
    producer: Producer, consumer: Consumer, items: list[dict[str, Any]]
) -> None:
    try:
        body = encode_frames(items)
    except FrameError:
        event("not framable")
        return
    records = _accepted(body, FRAMES_TYPE)
    if records is not None:
        event("accepted")
        _produce_and_compare(producer, consumer, records)
