"""Crash durability against a real broker: records accepted (202) while the broker was
unreachable survive the extension dying without a drain, and the next extension on the same
journal directory restores and delivers every one of them under its id."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import ProxiedBroker
from tests.relay_harness import running_relay


def test_records_accepted_before_the_extension_died_are_delivered_by_the_next_one(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    proxy.cut()  # nothing reaches Kafka: every accepted record stays pending
    with running_relay(proxy.address, tmp_path, default_topic=topic, init_probe_ms=200,
                       journal=True) as dead:
        sent: list[str] = []
        for batch in range(5):
            sent += dead.client.send([{"key": f"k{batch}-{i}", "value": i}
                                      for i in range(100)]).ids
        assert dead.parts.engine.gauge().pending == 500
        assert dead.parts.engine.gauge().counts["delivered"] == 0
        # Leaving the block stops the engine without a drain: what a SIGKILL leaves behind.
    assert list((tmp_path / "journal").glob("kafka-relay-journal-*.bin"))

    proxy.restore()
    with running_relay(proxy.address, tmp_path, default_topic=topic, journal=True) as fresh:
        relay = fresh.parts.engine
        assert relay.gauge().counts["restored"] == 500
        deadline = time.monotonic() + 60
        while relay.gauge().pending and time.monotonic() < deadline:
            relay.flush(1.0, retry_now=True)
        counts = relay.gauge().counts
        assert (counts["delivered"], counts["accepted"], counts["spilled"]) == (500, 0, 0)
        report = relay.drain(int(time.time() * 1000) + 2_000, reason="spindown")
        assert (report.pending, report.unaccounted) == (0, 0)
    assert not (tmp_path / "journal").exists(), "a clean exit leaves no journal behind"
    got = broker.read(topic, timeout=30)  # to its end: a duplicate carries the same id
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)
