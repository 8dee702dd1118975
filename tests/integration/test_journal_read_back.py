"""Against a real broker: records held past the in-flight window by a stalled broker wait
without their bytes in memory (the crash journal holds them), and reach the topic
byte-identical once it answers, and after the extension died without a drain and the next
one restored them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.delivery.queue import in_flight_window
from tests.conftest import ProxiedBroker
from tests.relay_harness import running_relay

BUFFER_BYTES = 4_000_000  # a 500 KB in-flight window
RECORDS = 2_000  # ~2 MB: four windows


def _batches() -> list[list[dict[str, Any]]]:
    """1 KB of random bytes per value, one header each: nothing to match by accident."""
    return [[{"key": f"k{b}-{i}", "value": os.urandom(1000),
              "headers": {"h": f"{b}-{i}".encode()}} for i in range(100)]
            for b in range(RECORDS // 100)]


def _held_bytes(engine: DeliveryEngine) -> int:
    return sum(len(r.key or b"") + len(r.value or b"")
               for r in engine._ledger.unsettled.values())


def _deliver_all(engine: DeliveryEngine) -> None:
    deadline = time.monotonic() + 60
    while engine.gauge().pending and time.monotonic() < deadline:
        engine.flush(1.0, retry_now=True)
    assert engine.gauge().pending == 0


def _check(broker: ProxiedBroker, topic: str, sent: dict[str, tuple[bytes, bytes, bytes]]
           ) -> None:
    got = broker.broker.read_ids(topic, sent, timeout=60)
    by_id = {r.headers["x-relay-id"].decode(): (r.key, r.value, r.headers.get("h"))
             for r in got}
    assert {i: by_id[i] for i in sent} == sent


def test_records_a_stalled_broker_held_past_the_window_arrive_byte_identical(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    topic = proxied_broker.broker.create_topic()
    sent: dict[str, tuple[bytes, bytes, bytes]] = {}
    with running_relay(proxied_broker.proxy.address, tmp_path, default_topic=topic, ring=False,
                       journal=True, max_buffer_bytes=BUFFER_BYTES) as relay:
        engine = relay.parts.engine
        relay.client.send([{"key": "warm", "value": b"up"}])  # connected before the stall
        _deliver_all(engine)
        proxied_broker.proxy.pause()  # connections stay open, nothing answers
        for batch in _batches():
            ids = relay.client.send(batch).ids
            sent.update((i, (r["key"].encode(), r["value"], r["headers"]["h"]))
                        for i, r in zip(ids, batch, strict=True))
        time.sleep(0.5)  # the pump hands the first batch to librdkafka
        assert engine.gauge().pending == RECORDS
        # The first window waits in memory (the rest of it behind the batch in flight), the
        # other three in the journal.
        assert _held_bytes(engine) <= in_flight_window(BUFFER_BYTES), (
            "what waits is in the journal, not in memory")
        proxied_broker.proxy.resume()
        _deliver_all(engine)
        assert relay.log_events("records.lost") == []
        assert engine.status()["unaccounted"] == 0
    _check(proxied_broker, topic, sent)


def test_records_held_without_their_bytes_survive_the_extension_dying(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    topic = proxied_broker.broker.create_topic()
    proxy = proxied_broker.proxy
    sent: dict[str, tuple[bytes, bytes, bytes]] = {}
    proxy.cut()  # nothing reaches Kafka
    with running_relay(proxy.address, tmp_path, default_topic=topic, ring=False, init_probe_ms=200,
                       journal=True, max_buffer_bytes=BUFFER_BYTES) as dead:
        for batch in _batches():
            ids = dead.client.send(batch).ids
            sent.update((i, (r["key"].encode(), r["value"], r["headers"]["h"]))
                        for i, r in zip(ids, batch, strict=True))
        assert _held_bytes(dead.parts.engine) <= in_flight_window(BUFFER_BYTES)
        # Leaving the block stops the engine without a drain: what a SIGKILL leaves behind.
    proxy.restore()
    with running_relay(proxy.address, tmp_path, default_topic=topic, ring=False, journal=True,
                       max_buffer_bytes=BUFFER_BYTES) as fresh:
        engine = fresh.parts.engine
        assert engine.gauge().counts["restored"] == RECORDS
        _deliver_all(engine)
        report = engine.drain(int(time.time() * 1000) + 2_000, reason="spindown")
        assert (report.pending, report.unaccounted) == (0, 0)
    _check(proxied_broker, topic, sent)
