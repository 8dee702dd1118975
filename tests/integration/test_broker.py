"""The local broker speaks real Kafka: records go in and the same bytes come back."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message, Producer

from devtools.kafka_broker import BrokerError, KafkaBroker
from tests.conftest import Broker


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, dict[str, bytes]]],
             *, compression: str) -> list[KafkaError | None]:
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": compression,
        "linger.ms": 5,
    })
    errors: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        errors.append(err)

    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=list(headers.items()),
                         on_delivery=on_delivery)
    assert producer.flush(10) == 0
    return errors


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_records_round_trip_with_keys_headers_and_compression(
    broker: Broker, compression: str
) -> None:
    topic = broker.create_topic(partitions=3)
    sent = [
        (f"key-{i}".encode(), bytes([i % 256]) * (i * 37 + 1), {"x-relay-id": f"id-{i}".encode()})
        for i in range(50)
    ]
    errors = _produce(broker.bootstrap, topic, sent, compression=compression)
    assert errors == [None] * 50

    got = broker.read(topic, expected=50)
    assert len(got) == 50
    by_key = {r.key: r for r in got}
    for key, value, headers in sent:
        assert by_key[key].value == value
        assert by_key[key].headers == headers


def test_starting_on_a_taken_port_names_the_port(broker: Broker) -> None:
    taken = int(broker.bootstrap.rsplit(":", 1)[1])
    if not broker.bootstrap.startswith("127.0.0.1"):
        pytest.skip("external broker")
    with pytest.raises(BrokerError, match=f"port {taken} .* already in use"):
        KafkaBroker(port=taken).start()


def test_a_missing_binary_is_reported_clearly() -> None:
    with pytest.raises(BrokerError, match="cannot run the Tansu broker binary '/nonexistent"):
        KafkaBroker(binary="/nonexistent/tansu").start()
