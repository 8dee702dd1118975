"""Shared fixtures: a real Kafka broker, unique topics, a broker behind a fault proxy."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.faultproxy import FaultProxy
from tests.kafka_broker import (
    EXTERNAL_BOOTSTRAP_ENV,
    ConsumedRecord,
    KafkaBroker,
    create_topics,
    free_port,
    read_topic,
)


@dataclass(frozen=True)
class Broker:
    """What tests need of a broker: where to bootstrap, and topic helpers."""

    bootstrap: str

    def create_topic(self, name: str | None = None, *, partitions: int = 1) -> str:
        name = name or f"test.{uuid.uuid4().hex[:12]}"
        create_topics(self.bootstrap, [name], partitions=partitions)
        return name

    def read(
        self, topic: str, *, expected: int | None = None, timeout: float = 10.0
    ) -> list[ConsumedRecord]:
        return read_topic(self.bootstrap, topic, expected=expected, timeout=timeout)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The suite's broker: $KAFKA_RELAY_TEST_BOOTSTRAP if set, else a local Tansu."""
    external = os.environ.get(EXTERNAL_BOOTSTRAP_ENV)
    if external:
        yield Broker(external)
        return
    with KafkaBroker() as local:
        yield Broker(local.bootstrap)


@pytest.fixture
def topic(broker: Broker) -> str:
    return broker.create_topic()


@dataclass(frozen=True)
class ProxiedBroker:
    """A dedicated broker reachable only through a fault proxy."""

    broker: Broker
    proxy: FaultProxy


@pytest.fixture
def proxied_broker() -> Iterator[ProxiedBroker]:
    """Its own broker (so cuts never disturb other tests) advertising the proxy's port."""
    proxy_port = free_port()
    with (
        KafkaBroker(advertised_port=proxy_port) as local,
        FaultProxy(local.listen_address, port=proxy_port) as proxy,
    ):
        yield ProxiedBroker(Broker(local.bootstrap), proxy)
