"""A key's order across transient failures, on a real broker: with the broker cut, more
records pending than librdkafka may hold at once (the in-flight window), and local message
timeouts failing what it holds again and again, every record reaches the topic once the
broker is back, each key's records in the order they were accepted."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from kafka_relay.client import RelayClient
from kafka_relay.delivery.queue import in_flight_window
from tests.conftest import ProxiedBroker
from tests.relay_harness import TOKEN, running_relay

KEYS = 10
RECORDS = 600
PAD = 1_000  # bytes per value: RECORDS of them are several in-flight windows
BUFFER_BYTES = 1_000_000


def test_a_keys_records_reach_kafka_in_acceptance_order_across_retries_past_the_window(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    assert 3 * in_flight_window(BUFFER_BYTES) < RECORDS * PAD, "a backlog past the window"
    overrides = {"message.timeout.ms": "1000", "reconnect.backoff.max.ms": "200"}
    with running_relay(proxy.address, tmp_path, default_topic=topic, init_probe_ms=200,
                       producer_overrides=overrides, retry_backoff_ms=200, max_attempts=1000,
                       max_buffer_records=RECORDS, max_buffer_bytes=BUFFER_BYTES) as h:
        client = RelayClient(env={}, port=h.config.port, token=TOKEN, timeout_s=5.0)
        proxy.cut()
        sent: list[str] = []
        for start in range(0, RECORDS, 50):
            sent += client.send([{"key": f"k{n % KEYS}", "value": {"seq": n, "pad": "x" * PAD}}
                                 for n in range(start, start + 50)]).ids
        client.close()
        # Several message timeouts: what librdkafka held fails, waits out its backoff, and
        # the records behind the window go into librdkafka meanwhile.
        time.sleep(6.0)
        retries = h.parts.engine.gauge().counts["retries"]
        window_records = in_flight_window(BUFFER_BYTES) // PAD
        assert retries > 2 * window_records, f"only {retries} failed: none past the window"
        proxy.restore()
        deadline = time.monotonic() + 120
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)
        status = h.parts.engine.status()
        counts = h.parts.engine.gauge().counts
        assert (status["unaccounted"], h.parts.engine.gauge().pending) == (0, 0)
        assert (counts["accepted"], counts["delivered"]) == (RECORDS, RECORDS)
    records = broker.read(topic, timeout=60)
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:  # a retried record may be on the topic twice: its first copy counts
        relay_id = record.headers["x-relay-id"].decode()
        if relay_id not in seen:
            seen.add(relay_id)
            by_key[record.key].append(json.loads(record.value or b"{}")["seq"])
    assert seen == set(sent)
    assert set(by_key) == {f"k{k}".encode() for k in range(KEYS)}
    out_of_order = {key.decode(): seqs for key, seqs in by_key.items()
                    if key is not None and seqs != sorted(seqs)}
    assert not out_of_order, f"out of order for {len(out_of_order)} keys: {out_of_order}"
