"""Every record the handoff validation accepts is producible by the real confluent-kafka
producer against the test broker (issue 13: a 202 must never poison the producer)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Message, Producer
from hypothesis import HealthCheck, event, given, settings

from kafka_relay.handoff.schema import InvalidRequest, parse_body, validate
from tests.conftest import Broker
from tests.record_strategies import bodies

_ids = itertools.count()
_TOPICS = ["schema.prop.a", "schema.prop.b"]


@pytest.fixture(scope="module")
def producer(broker: Broker) -> Iterator[Producer]:
    for name in _TOPICS:
        broker.create_topic(name)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 15_000})
    yield producer
    producer.flush(10)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies(_TOPICS))
def test_every_accepted_record_is_produced_and_delivered(producer: Producer,
                                                         body: bytes) -> None:
    try:
        records = validate(parse_body(body, "application/json"), default_topic=_TOPICS[0],
                           new_id=lambda: f"prop-{next(_ids)}", request_id="req",
                           now_ms=0)
    except InvalidRequest:
        event("rejected")
        return  # the unit property test checks the reasons
    event("accepted")
    reports: list[KafkaError | None] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        reports.append(error)

    for record in records:
        headers: list[tuple[str, str | bytes | None]] = [*record.kafka_headers()]
        producer.produce(record.topic, record.value, record.key, headers=headers,
                         timestamp=record.timestamp_ms or 0, on_delivery=on_delivery)
    assert producer.flush(20) == 0
    assert reports == [None] * len(records)
