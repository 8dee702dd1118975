"""SHUTDOWN sized in bytes, and a pump that dies: the engine hands every record it holds to
the spill chain and says so in its status."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.config import EXTENSION_SHUTDOWN_MS, Config, load_config
from kafka_relay.delivery.budget import (
    MEMORY_PER_PENDING_BYTE,
    S3_RESERVE_MS,
    SPOOL_DISK_SHARE,
    BufferPlan,
    buffer_limits,
    cpu_share,
    drain_plan,
    spill_ms,
    spool_spill_ms,
)
from kafka_relay.delivery.ledger import BufferFull
from kafka_relay.spill.codec import parse_spill_lines
from tests.unit.engine_fakes import FakeProducer, Rig


def test_drain_restores_the_spool_then_spills_what_the_deadline_leaves_to_log_lines(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, shutdown_margin_ms=300)
    rig.spill.spill(rig.records(2), reason="earlier: DLQ down")  # parked in /tmp
    rig.producer.hold = True  # a stalled broker
    rig.engine.accept(rig.records(3))
    rig.step()
    report = rig.engine.drain(rig.clock.now_ms + 250, reason="spindown")  # past the margin
    assert report.spilled_at_shutdown == 5
    assert (report.pending, report.unaccounted, report.drained) == (0, 0, 0)
    assert (report.counts["restored"], report.counts["spooled"]) == (2, 0)
    assert report.counts["spilled"] == 5
    spilled = parse_spill_lines(rig.log.getvalue().splitlines()).records
    assert sorted(r.id for r in spilled) == ["r1", "r2", "r3", "r4", "r5"]
    assert not list((tmp_path / "spool").iterdir()), "SHUTDOWN never spools: /tmp dies"
    assert report.as_log()["reason"] == "spindown"
    rig.assert_accounted()
    with pytest.raises(BufferFull) as refused:
        rig.engine.accept(rig.records(1))
    assert refused.value.retry_after_ms == 0  # 503: shutting down


def test_drain_delivers_what_the_broker_takes_before_spilling(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.start()  # the real pump thread on the fake producer
    try:
        rig.engine.accept(rig.records(4))
        report = rig.engine.drain(rig.clock.now_ms + EXTENSION_SHUTDOWN_MS, reason="spindown")
    finally:
        rig.engine.stop()
    assert report.counts["delivered"] == 4
    assert (report.spilled_at_shutdown, report.unaccounted) == (0, 0)


def test_a_pump_that_dies_spills_everything_and_reports_unhealthy(tmp_path: Path) -> None:
    rig = Rig(tmp_path, producer=lambda: FakeProducer(hold=True))
    rig.engine.accept(rig.records(3))
    rig.step()  # three in flight in the producer

    def broken_poll(timeout: float = 0) -> int:
        raise RuntimeError("librdkafka went away")

    rig.producer.poll = broken_poll  # type: ignore[method-assign]
    runner = threading.Thread(target=rig.engine.pump.run)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert rig.engine.gauge().failure is not None
    status = rig.engine.status()
    assert status["pump"] == {"healthy": False, "error": "RuntimeError: librdkafka went away"}
    assert rig.counts()["spilled"] == 3
    rig.assert_accounted()
    assert rig.events("pump.died")
    with pytest.raises(BufferFull, match="pump stopped") as refused:
        rig.engine.accept(rig.records(1))
    assert refused.value.retry_after_ms == 0
    assert rig.engine.flush(5.0).remaining == 0  # returns at once: nobody would send
    assert rig.engine.restore_spool() == 0
    report = rig.engine.drain(rig.clock.now_ms + 2_000, reason="spindown")
    assert report.as_log()["pump_error"] == "RuntimeError: librdkafka went away"
    assert (report.unaccounted, report.counts["spilled"]) == (0, 3)


def test_the_drain_keeps_back_more_time_for_more_pending_bytes() -> None:
    small = drain_plan(deadline_ms=10_000, margin_ms=300, pending=1_000, pending_bytes=10**5,
                       has_bucket=False)
    big = drain_plan(deadline_ms=10_000, margin_ms=300, pending=1_000, pending_bytes=10**7,
                     has_bucket=False)
    with_s3 = drain_plan(deadline_ms=10_000, margin_ms=300, pending=1_000, pending_bytes=10**7,
                         has_bucket=True)
    assert big.flush_until_ms < small.flush_until_ms
    assert with_s3.flush_until_ms < big.flush_until_ms == big.s3_until_ms
    assert with_s3.s3_until_ms == big.s3_until_ms
    assert small.s3_until_ms <= 10_000 - 300


def test_the_drain_also_keeps_back_the_time_the_parked_spool_takes_to_spill() -> None:
    memory_only = drain_plan(deadline_ms=10_000, margin_ms=300, pending=1_000,
                             pending_bytes=10**5, has_bucket=False, memory_mb=256)
    with_parked = drain_plan(deadline_ms=10_000, margin_ms=300, pending=1_000,
                             pending_bytes=10**5, has_bucket=False, memory_mb=256,
                             parked=(40, 1_000, 10**5))
    kept_back = memory_only.flush_until_ms - with_parked.flush_until_ms
    assert kept_back == pytest.approx(spool_spill_ms(40, 1_000, 10**5, memory_mb=256), abs=1)


def test_spilling_costs_more_on_a_smaller_function() -> None:
    assert cpu_share(0) == cpu_share(1_769) == cpu_share(10_240) == 1.0
    assert spill_ms(1_000, 10**6, memory_mb=256) > spill_ms(1_000, 10**6, memory_mb=1_024)


FREE = 512 * 1024 * 1024  # Lambda's default ephemeral storage


def _config(memory_mb: int, **env: str) -> Config:
    return load_config({"KAFKA_BOOTSTRAP_SERVERS": "x:9092",
                        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb), **env})


def _worst_spill_ms(plan: BufferPlan, memory_mb: int) -> float:
    """The memory buffer and the outage spool both full, spilled at SHUTDOWN (the spool at
    disk's cost: per batch, per record and per byte of file)."""
    spool = plan.spool
    assert spool.batches is not None
    assert spool.records is not None
    return (spill_ms(plan.limits.records, plan.limits.bytes, memory_mb=memory_mb)
            + spool_spill_ms(spool.batches, spool.records, spool.bytes, memory_mb=memory_mb))


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("memory_mb", [128, 256, 1_024, 3_008, 0])
def test_default_buffer_and_spool_limits_can_always_be_spilled_before_the_shutdown_deadline(
    memory_mb: int, bucket: bool,
) -> None:
    config = _config(memory_mb, **({"KAFKA_RELAY_SPILL_BUCKET": "b"} if bucket else {}))
    plan = buffer_limits(config, spool_free_bytes=FREE)
    assert plan.limits == plan.safe
    assert plan.over == ()
    assert plan.spool == plan.spool_safe
    assert plan.spool.bytes > 0
    assert not plan.spool_over
    worst = _worst_spill_ms(plan, memory_mb) + (S3_RESERVE_MS if bucket else 0)
    assert worst <= EXTENSION_SHUTDOWN_MS - config.shutdown_margin_ms
    if memory_mb:
        assert plan.limits.bytes * MEMORY_PER_PENDING_BYTE <= memory_mb * 1024 * 1024 * 0.25 + 1


@settings(max_examples=200, deadline=None)
@given(memory_mb=st.one_of(st.just(0), st.integers(min_value=128, max_value=10_240)),
       free=st.integers(min_value=0, max_value=2**40), bucket=st.booleans(),
       margin_ms=st.integers(min_value=0, max_value=1_000))
def test_any_memory_size_and_free_space_keep_memory_and_spool_within_the_spill_window(
    memory_mb: int, free: int, bucket: bool, margin_ms: int,
) -> None:
    config = _config(memory_mb, KAFKA_RELAY_SHUTDOWN_MARGIN_MS=str(margin_ms),
                     **({"KAFKA_RELAY_SPILL_BUCKET": "b"} if bucket else {}))
    plan = buffer_limits(config, spool_free_bytes=free)
    assert plan.spool.bytes <= free * SPOOL_DISK_SHARE
    window_ms = (EXTENSION_SHUTDOWN_MS - margin_ms - (S3_RESERVE_MS if bucket else 0))
    if plan.spool.bytes == 0:  # no room on disk: no spool, memory has the whole window
        alone = buffer_limits(_config(memory_mb, KAFKA_RELAY_SHUTDOWN_MARGIN_MS=str(margin_ms),
                                      KAFKA_RELAY_SPOOL_MAX_BYTES="0",
                                      **({"KAFKA_RELAY_SPILL_BUCKET": "b"} if bucket else {})),
                              spool_free_bytes=free)
        assert plan.limits == alone.limits
    else:
        assert _worst_spill_ms(plan, memory_mb) <= window_ms + 1


def test_without_the_spool_the_memory_buffer_keeps_the_whole_spill_window() -> None:
    shared = buffer_limits(_config(1_769), spool_free_bytes=FREE)
    alone = buffer_limits(_config(1_769, KAFKA_RELAY_SPOOL_MAX_BYTES="0"), spool_free_bytes=FREE)
    assert alone.spool.bytes == 0
    assert not alone.spool_over
    assert alone.limits.records == 2 * shared.limits.records
    assert alone.limits.bytes == 2 * shared.limits.bytes
    worst = spill_ms(alone.limits.records, alone.limits.bytes, memory_mb=1_769)
    assert EXTENSION_SHUTDOWN_MS - 300 - 2 <= worst <= EXTENSION_SHUTDOWN_MS - 300


def test_the_spool_takes_at_most_half_the_free_space_on_disk() -> None:
    plan = buffer_limits(_config(1_769), spool_free_bytes=1_000_000)
    assert plan.spool.bytes == 500_000
    assert buffer_limits(_config(1_769), spool_free_bytes=0).spool.bytes == 0


def test_an_explicit_spool_limit_over_what_shutdown_can_spill_is_kept_and_warned_about(
    tmp_path: Path,
) -> None:
    plan = buffer_limits(_config(256, KAFKA_RELAY_SPOOL_MAX_BYTES=str(10**9)),
                         spool_free_bytes=FREE)
    assert (plan.spool.bytes, plan.spool.batches, plan.spool.records) == (10**9, None, None)
    assert plan.spool_over
    rig = Rig(tmp_path, function_memory_mb=256, spool_max_bytes=10**9)
    (warning,) = rig.events("overflow.limit_over_spill_budget")
    assert warning["variable"] == "KAFKA_RELAY_SPOOL_MAX_BYTES"
    assert (warning["limit_bytes"], warning["safe_bytes"]) == (10**9, plan.spool_safe.bytes)
    assert "KAFKA_RELAY_SPILL_BUCKET" in warning["hint"]
    assert rig.engine.status()["overflow"]["limit_bytes"] == 10**9
    within = Rig(tmp_path / "within", function_memory_mb=256,
                 spool_max_bytes=plan.spool_safe.bytes)
    assert within.events("overflow.limit_over_spill_budget") == []


def test_explicit_buffer_limits_win_and_are_reported_when_over_the_safe_ones(
    tmp_path: Path,
) -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "x:9092",
                          "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                          "KAFKA_RELAY_MAX_BUFFER_RECORDS": "100000",
                          "KAFKA_RELAY_MAX_BUFFER_BYTES": "1000"})
    plan = buffer_limits(config, spool_free_bytes=FREE)
    assert (plan.limits.records, plan.limits.bytes) == (100_000, 1_000)
    assert plan.over == ("KAFKA_RELAY_MAX_BUFFER_RECORDS",)
    rig = Rig(tmp_path, max_buffer_records=100_000, function_memory_mb=256)
    (warning,) = rig.events("buffer.limits_over_spill_budget")
    assert warning["variables"] == ["KAFKA_RELAY_MAX_BUFFER_RECORDS"]
    assert rig.engine.status()["limits"]["records"] == 100_000


def test_a_fatal_error_seen_only_by_error_cb_rebuilds_on_the_next_step(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.on_client_error(KafkaError(KafkaError._FATAL, fatal=True))
    rig.step()
    assert rig.counts()["producers_built"] == 2
    assert rig.engine.status()["last_error"].startswith("_FATAL")
