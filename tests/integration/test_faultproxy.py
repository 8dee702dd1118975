"""The fault proxy really delays, holds and cuts traffic between a client and the broker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Message, Producer

from devtools.faultproxy import FaultProxy
from tests.conftest import ProxiedBroker


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    server.close()


def _round_trip_s(address: str) -> float:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        start = time.monotonic()
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        return time.monotonic() - start


def test_latency_is_added_per_direction(echo_server: str) -> None:
    with FaultProxy(echo_server, up_latency_ms=15, down_latency_ms=25) as proxy:
        rtts = [_round_trip_s(proxy.address) for _ in range(5)]
    assert min(rtts) >= 0.040  # lower bound only: a loaded machine can be slower


def test_set_latency_applies_to_later_traffic(echo_server: str) -> None:
    with FaultProxy(echo_server) as proxy:
        before = _round_trip_s(proxy.address)
        proxy.set_latency(up_ms=30, down_ms=30)
        after = _round_trip_s(proxy.address)
    assert after >= 0.060
    assert after > before


def test_cut_refuses_new_connections_until_restored(echo_server: str) -> None:
    with FaultProxy(echo_server) as proxy:
        proxy.cut()
        host, port = proxy.address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2)
        proxy.restore()
        assert _round_trip_s(proxy.address) > 0  # answered again


def _producer(bootstrap: str, **extra: str | int) -> Producer:
    # Not idempotent: after a local message timeout librdkafka bumps the
    # producer epoch, which this broker answers with PRODUCER_FENCED (the
    # extension treats that as fatal and builds a new producer).
    config: dict[str, str | int] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "message.timeout.ms": 2000,
        "reconnect.backoff.max.ms": 200,
    }
    config.update(extra)
    return Producer(config)


def test_cut_times_delivery_out_and_restore_delivers(proxied_broker: ProxiedBroker) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    producer = _producer(proxy.address)
    results: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        results.append(err)

    producer.produce(topic, value=b"before-cut", on_delivery=on_delivery)
    assert producer.flush(10) == 0
    assert results == [None]

    proxy.cut()
    producer.produce(topic, value=b"during-cut", on_delivery=on_delivery)
    producer.flush(5)
    assert len(results) == 2
    assert results[1] is not None
    assert results[1].code() == KafkaError._MSG_TIMED_OUT

    proxy.restore()
    producer.produce(topic, value=b"after-restore", on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert results[2] is None
    values = [r.value for r in broker.read(topic, expected=2)]
    assert values == [b"before-cut", b"after-restore"]


def test_pause_holds_delivery_and_resume_releases_it(proxied_broker: ProxiedBroker) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    producer = _producer(proxy.address, **{"message.timeout.ms": 30000})
    producer.produce(topic, value=b"warm-up")
    assert producer.flush(10) == 0

    proxy.pause()
    producer.produce(topic, value=b"held")
    assert producer.flush(1.0) == 1  # still queued: the proxy holds the bytes
    proxy.resume()
    assert producer.flush(10) == 0
    assert [r.value for r in broker.read(topic, expected=2)] == [b"warm-up", b"held"]
