"""Faults between the extension and Kafka: every accepted record ends delivered, DLQ'd, spilled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kafka_relay.client import RelayBusy, RelayClient
from kafka_relay.record import Record
from kafka_relay.spill.codec import parse_spill_lines
from tests.conftest import Broker, ProxiedBroker
from tests.relay_harness import TOKEN, Harness, running_relay


def _now_ms() -> int:
    return int(time.time() * 1000)


def _invoke(h: Harness, request_id: str, records: int, *, start: int = 0) -> list[str]:
    h.client.request_id = request_id
    ids = h.client.send([{"key": f"k{i}", "value": i} for i in range(start, start + records)]).ids
    h.client.invocation_end()
    h.loop.invoke({"requestId": request_id, "deadlineMs": _now_ms() + 3000})
    return ids


def _assert_accounted(h: Harness) -> None:
    counts = h.parts.engine.gauge().counts
    pending = h.parts.engine.gauge().pending
    settled = (counts["delivered"] + counts["dead_lettered"] + counts["spilled"]
               + counts["spooled"])
    assert counts["accepted"] + counts["restored"] == settled + pending


def _outage_then_recovery(proxied: ProxiedBroker, tmp_path: Path, outage_s: float) -> None:
    broker, proxy = proxied.broker, proxied.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic, flush_budget_ms=500,
                       producer_overrides={"reconnect.backoff.max.ms": "200"}) as h:
        sent = _invoke(h, "before", 10)
        proxy.cut()
        cut_at = time.monotonic()
        n = 1
        while time.monotonic() - cut_at < outage_s:
            sent += _invoke(h, f"during-{n}", 10, start=10 * n)
            n += 1
            time.sleep(0.1)  # the breaker makes these invocations instant: pace them
        assert h.parts.engine.gauge().pending > 0, "records sent during the cut must be pending"
        proxy.restore()
        deadline = time.monotonic() + 30
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)
        _assert_accounted(h)
        counts = h.parts.engine.gauge().counts
        assert counts["delivered"] == len(sent)
        assert counts["dead_lettered"] == counts["spilled"] == 0
    got = broker.read(topic, expected=len(sent), timeout=20)
    ids = [r.headers["x-relay-id"].decode() for r in got]
    assert set(ids) == set(sent)  # 0 lost; any duplicates carry the same id


def test_a_short_broker_outage_across_invocations_loses_nothing(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    _outage_then_recovery(proxied_broker, tmp_path, outage_s=3)


@pytest.mark.slow
def test_a_30_second_broker_outage_across_invocations_loses_nothing(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    _outage_then_recovery(proxied_broker, tmp_path, outage_s=30)


def test_shutdown_during_a_stalled_flush_spills_the_rest_before_the_deadline(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    proxy.set_latency(up_ms=10, down_ms=10)
    with running_relay(proxy.address, tmp_path, default_topic=topic) as h:
        _invoke(h, "warm", 100)
        proxy.pause()  # the broker stops answering mid-flight
        ids = h.client.send([{"key": f"k{i}", "value": "x" * 200} for i in range(5_000)]).ids
        deadline_ms = _now_ms() + 2000
        assert h.loop.shutdown("spindown", deadline_ms) == 0
        log = h.log_lines()
        (summary,) = h.log_events("shutdown.summary")
    assert summary["unaccounted"] == 0
    assert summary["pending"] == 0
    assert summary["spilled"] == summary["spilled_at_shutdown"] == 5_000
    spilled = parse_spill_lines(log).records
    assert {r.id for r in spilled} == set(ids)


def test_a_256_mb_function_with_a_stalled_broker_answers_429_at_its_limit_and_loses_nothing(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    # The memory limit alone (KAFKA_RELAY_SPOOL_MAX_BYTES=0): test_outage_spool.py rides the
    # same stall through on disk.
    with running_relay(proxy.address, tmp_path, default_topic=topic,
                       function_memory_mb=256, spool_max_bytes=0) as h:
        limits = h.client.status()["limits"]
        assert 0 < limits["bytes"] < 64 * 1024 * 1024, "derived from the spill rate and memory"
        _invoke(h, "warm", 10)
        proxy.pause()  # the broker stops answering: everything from now on stays pending
        # A short budget, so that a 429 turns into RelayBusy soon; long enough for a POST
        # to be answered on a loaded machine.
        busy = RelayClient(env={}, port=h.config.port, token=TOKEN, timeout_s=3.0)
        accepted: list[str] = []
        refused: RelayBusy | None = None
        for n in range(10_000):  # bounded: the limit is reached long before
            batch = [{"key": f"b{n}-{i}", "value": "x" * 1000} for i in range(100)]
            try:
                accepted += busy.send(batch).ids
            except RelayBusy as exc:
                refused = exc
                break
        busy.close()
        assert refused is not None, "past the limit the relay answers 429"
        gauge = h.parts.engine.gauge()
        assert gauge.pending <= limits["records"]
        assert gauge.pending_bytes <= limits["bytes"]
        assert h.loop.shutdown("spindown", _now_ms() + 2000) == 0
        (summary,) = h.log_events("shutdown.summary")
        spilled = {r.id for r in parse_spill_lines(h.log_lines()).records}
    assert (summary["unaccounted"], summary["pending"]) == (0, 0)
    assert summary["accepted"] == len(accepted) + 10
    assert set(accepted) <= spilled
    assert summary["rejected"] >= 100


def test_a_full_buffer_while_connections_to_kafka_fail_is_refused_after_one_try(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic, max_buffer_records=100,
                       spool_max_bytes=0) as h:
        sent = _invoke(h, "warm", 10)
        proxy.cut()  # connections close, new ones are refused
        client = RelayClient(env={}, port=h.config.port, token=TOKEN, timeout_s=30.0)
        for n in range(3):  # fills the 100 records
            try:
                sent += client.send([{"key": f"f{n}-{i}", "value": i} for i in range(45)]).ids
            except RelayBusy:
                break
        deadline = time.monotonic() + 10  # librdkafka retries the connection every second
        while not h.parts.engine.reachability.gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.parts.engine.reachability.gone()
        # librdkafka reports the same failure of the known broker again only after 30 s:
        # seconds into the outage, the broker is still known to be away.
        time.sleep(3.0)
        assert h.parts.engine.reachability.gone()
        rejected = h.parts.engine.gauge().counts["rejected"]
        started = time.monotonic()
        with pytest.raises(RelayBusy, match=r"Kafka is not answering.*NOT accepted"):
            client.send([{"key": "late", "value": i} for i in range(45)])
        took_s = time.monotonic() - started
        client.close()
        # One try, no back-off: the buffer cannot drain while no connection opens.
        assert h.parts.engine.gauge().counts["rejected"] == rejected + 45
        assert took_s < 0.4
        proxy.restore()
        deadline = time.monotonic() + 30
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)
        assert h.parts.engine.gauge().counts["delivered"] == len(sent)
        assert not h.parts.engine.reachability.gone()
    got = broker.read(topic, expected=len(sent), timeout=20)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)


def test_a_connection_the_broker_closed_while_idle_is_reopened_to_the_known_broker(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    # As a broker closes idle connections (connections.max.idle.ms) while Lambda freezes the
    # environment: its only connection gone, librdkafka must not re-bootstrap (that forgets
    # the broker and waits for two 1 s metadata timers, past the flush's stall limit).
    # librdkafka's own debug log says when it starts one (a count of the proxy's connections
    # would also count a reconnect retried under load).
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic,
                       producer_overrides={"debug": "generic"}) as h:
        sent = _invoke(h, "before", 5)
        assert h.parts.engine.gauge().counts["delivered"] == 5
        opened = proxy.stats.connections
        assert proxy.drop_connections() >= 1
        sent += _invoke(h, "after", 5, start=5)
        assert h.parts.engine.gauge().pending == 0, "delivered within its own invocation"
        assert proxy.stats.connections > opened, "reconnected"
        rebootstraps = [line for line in h.log_lines() if "Starting re-bootstrap" in line]
        assert rebootstraps == []
        _assert_accounted(h)
    got = broker.read(topic, expected=len(sent), timeout=20)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)


def test_a_fenced_producer_is_replaced_and_its_records_resent(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    overrides = {"message.timeout.ms": "1500", "reconnect.backoff.max.ms": "200"}
    with running_relay(proxy.address, tmp_path, default_topic=topic, producer_overrides=overrides,
                       retry_backoff_ms=100, max_attempts=5) as h:
        first = _invoke(h, "one", 5)
        proxy.cut()
        during = h.client.send([{"key": f"c{i}", "value": i} for i in range(5)]).ids
        time.sleep(2.0)  # past message.timeout.ms: local timeouts, epoch bump pending
        proxy.restore()
        deadline = time.monotonic() + 30
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)
        _assert_accounted(h)
        counts = h.parts.engine.gauge().counts
        assert counts["delivered"] == 10
        assert counts["retries"] >= 1
        assert counts["producers_built"] >= 2  # this broker fences the bumped epoch
    got = broker.read_ids(topic, first + during, timeout=20)  # retried: duplicates
    assert {r.headers["x-relay-id"].decode() for r in got} == set(first + during)


def test_a_record_the_real_producer_cannot_take_is_spilled_and_the_pump_goes_on(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    # Handed to the engine directly: whatever validation lets through, the pump must survive.
    poison = Record(id="poison-1", topic=topic, key=b"p", value=b"v", timestamp_ms=2**63)
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        h.parts.engine.accept([poison])
        ids = _invoke(h, "after", 5)
        status = h.client.status()
        h.loop.shutdown("spindown", _now_ms() + 2000)
        (summary,) = h.log_events("shutdown.summary")
        unproducible = h.log_events("record.unproducible")
        spilled = parse_spill_lines(h.log_lines()).records
    assert status["pump"] == {"healthy": True, "error": None}
    assert (summary["delivered"], summary["spilled"], summary["unaccounted"]) == (5, 1, 0)
    assert [e["id"] for e in unproducible] == ["poison-1", "poison-1"]  # topic, then its DLQ
    assert [r.id for r in spilled] == ["poison-1"]
    got = broker.read(topic, expected=5, timeout=20)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(ids)
