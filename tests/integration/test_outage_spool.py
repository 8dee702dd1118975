"""Outage ride-through on a real broker: with the broker cut and a small memory buffer, a
producer sending at its steady rate never sees an error while the disk spool has room; when
the broker answers again every record arrives, in order per key. Past the spool's limit the
answer is 507 naming KAFKA_RELAY_SPOOL_MAX_BYTES, and nothing accepted is lost. With the
broker still down at SHUTDOWN, memory and a spool full to its default limit are all spilled
before the deadline."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from kafka_relay.client import RelayClient
from kafka_relay.config import EXTENSION_SHUTDOWN_MS
from kafka_relay.protocol import RelayStorageUnavailable
from kafka_relay.spill.codec import parse_spill_lines
from tests.conftest import ProxiedBroker
from tests.relay_harness import TOKEN, Harness, running_relay

KEYS = 10
# The producers' rate, scaled: BATCH records every PERIOD_S seconds.
BATCH, PERIOD_S = 50, 0.1


def _drain(h: Harness, timeout_s: float = 120) -> None:
    relay = h.parts.engine
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (
            relay.gauge().pending or relay.status()["overflow"]["records"]):
        relay.flush(1.0, retry_now=True)


def _send_until_refused(h: Harness, *, value: str, max_batches: int) -> tuple[list[str], str]:
    """Batches of 20 records until the answer is 507: the ids accepted, the refusal."""
    client = RelayClient(env={}, port=h.config.port, token=TOKEN, timeout_s=1.0,
                         sleep=lambda _s: None)
    sent: list[str] = []
    try:
        for n in range(max_batches):  # bounded: the limit is reached long before
            sent += client.send([{"key": f"k{n % KEYS}", "value": value}
                                 for _ in range(20)]).ids
    except RelayStorageUnavailable as exc:
        return sent, str(exc)
    finally:
        client.close()
    raise AssertionError(f"no 507 after {max_batches} batches")


@pytest.mark.parametrize("outage_s", [
    pytest.param(float(os.environ.get("OUTAGE_S", "6")), id="short"),
    # Longer than the suite's per-test timeout by design: its own, with a margin to settle.
    pytest.param(900.0, id="15-minutes", marks=[pytest.mark.slow, pytest.mark.timeout(1200)]),
])
def test_an_outage_rides_through_on_disk_without_an_error_and_arrives_in_order_per_key(
    proxied_broker: ProxiedBroker, tmp_path: Path, outage_s: float
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    # A 15-minute outage parks more batches than SHUTDOWN could spill: that takes an explicit
    # limit (warned about at init), as it would in production.
    spool: dict[str, Any] = {} if outage_s < 60 else {"spool_max_bytes": 10**9}
    with running_relay(proxy.address, tmp_path, default_topic=topic, init_probe_ms=200,
                       max_buffer_records=300, **spool) as h:
        client = RelayClient(env={}, port=h.config.port, token=TOKEN, timeout_s=5.0)
        proxy.cut()
        sent: list[str] = []
        sequence = 0
        ends = time.monotonic() + outage_s
        while time.monotonic() < ends:  # any error fails the test: 0 handler errors
            batch = []
            for _ in range(BATCH):
                batch.append({"key": f"k{sequence % KEYS}", "value": {"seq": sequence}})
                sequence += 1
            sent += client.send(batch).ids
            time.sleep(PERIOD_S)
        client.close()
        status = h.client.status()
        assert status["overflow"]["records"] > 0, "the outage never reached the disk spool"
        assert status["pending"] <= 300
        proxy.restore()
        _drain(h)
        counts = h.parts.engine.gauge().counts
        assert h.parts.engine.status()["unaccounted"] == 0
        assert counts["accepted"] == len(sent) == sequence
    records = broker.read(topic, timeout=60)
    first_seen: dict[str, int] = {}
    for record in records:
        first_seen.setdefault(record.headers["x-relay-id"].decode(), len(first_seen))
    assert set(first_seen) == set(sent), f"{len(set(sent) - set(first_seen))} lost"
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    seen_ids: set[str] = set()
    for record in records:
        relay_id = record.headers["x-relay-id"].decode()
        if relay_id not in seen_ids:
            seen_ids.add(relay_id)
            by_key[record.key].append(json.loads(record.value or b"{}")["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_key.values()), "out of order for a key"


def test_past_the_spool_limit_the_answer_is_507_and_nothing_accepted_is_lost(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic, init_probe_ms=200,
                       max_buffer_records=100, spool_max_bytes=20_000) as h:
        proxy.cut()
        sent, refusal = _send_until_refused(h, value="x" * 100, max_batches=200)
        assert "KAFKA_RELAY_SPOOL_MAX_BYTES" in refusal
        assert h.client.status()["overflow"]["bytes"] <= 20_000
        proxy.restore()
        _drain(h)
    on_topic = {r.headers["x-relay-id"].decode() for r in broker.read(topic, timeout=60)}
    assert on_topic == set(sent)


def test_with_the_broker_down_shutdown_spills_a_full_memory_buffer_and_default_spool(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic, init_probe_ms=200,
                       function_memory_mb=256) as h:
        status = h.client.status()
        limits, spool = status["limits"], status["overflow"]
        assert spool["limit_batches"] is not None, "the default spool is bounded by SHUTDOWN"
        proxy.cut()
        sent, refusal = _send_until_refused(h, value="x" * 400, max_batches=10_000)
        assert "disk spool is at its limit" in refusal
        status = h.client.status()
        parked = status["overflow"]
        assert parked["records"] > 0
        assert status["pending"] + 20 > min(limits["records"], limits["bytes"] // 420)
        assert (parked["bytes"] + 20 * 500 > spool["limit_bytes"]
                or parked["files"] == spool["limit_batches"]
                or parked["records"] + 20 > spool["limit_records"])
        report = h.parts.engine.drain(int(time.time() * 1000) + EXTENSION_SHUTDOWN_MS,
                                      reason="spindown")
        assert h.log_events("overflow.left_at_shutdown") == []
        assert (report.unaccounted, report.pending) == (0, 0)
        assert report.counts["accepted"] == len(sent)
        assert report.spilled_at_shutdown + report.drained == len(sent)
        spilled = parse_spill_lines(h.log_lines()).records
        assert {r.id for r in spilled} == set(sent)
        assert not list((tmp_path / "spool" / "overflow").glob("*.bin"))
