"""The outage spool: batches that do not fit in memory wait on disk in order, come back as
memory frees up, survive a killed extension, and past the spool's limit are refused (507)
naming KAFKA_RELAY_SPOOL_MAX_BYTES."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kafka_relay.config import load_config
from kafka_relay.delivery.budget import SPOOL_DISK_SHARE, buffer_limits
from kafka_relay.delivery.ledger import BufferFull, Limits
from kafka_relay.delivery.overflow import free_space
from kafka_relay.protocol import Outcome, Refusal
from tests.unit.engine_fakes import FakeProducer, Rig

SMALL = Limits(records=4, bytes=1_000_000)


def _stalled(tmp_path: Path, **overrides: object) -> Rig:
    return Rig(tmp_path, limits=SMALL, producer=lambda: FakeProducer(hold=True), **overrides)


def _release(rig: Rig, steps: int = 50) -> None:
    """The broker answers again: deliver until nothing is left, refilling from the spool."""
    rig.producer.hold = False
    for _ in range(steps):
        rig.step()
        rig.engine.restore_spool()
        if rig.engine.gauge().pending == 0 and not rig.engine.status()["overflow"]["records"]:
            return


def test_a_batch_that_does_not_fit_in_memory_is_parked_on_disk_and_accepted(
    tmp_path: Path
) -> None:
    rig = _stalled(tmp_path)
    rig.engine.accept(rig.records(4))
    rig.step()
    watch = rig.engine.accept(rig.records(3), watch=True)
    assert watch is not None
    assert {outcome for outcome, _ in watch.outcomes.values()} == {Outcome.SPILLED}
    counts = rig.counts()
    assert (counts["accepted"], counts["spooled"], counts["rejected"]) == (7, 3, 0)
    overflow = rig.engine.status()["overflow"]
    assert (overflow["records"], overflow["files"]) == (3, 1)
    rig.assert_accounted()


def test_once_anything_waits_on_disk_later_batches_queue_behind_it_and_all_arrive_in_order(
    tmp_path: Path
) -> None:
    rig = _stalled(tmp_path)
    batches = [rig.records(2) for _ in range(6)]
    for batch in batches:
        rig.engine.accept(batch)
    rig.step()
    rig.producer.hold = False
    rig.step()  # memory empties; the spool still holds later batches
    rig.engine.accept(extra := rig.records(1))  # room in memory, but it queues behind
    _release(rig)
    sent = [m.relay_id for m in rig.all_sent()]
    assert sent == [r.id for batch in [*batches, extra] for r in batch]
    assert rig.counts()["delivered"] == 13
    assert rig.counts()["restored"] == rig.counts()["spooled"] == 9
    assert not list((tmp_path / "spool" / "overflow").glob("*.bin"))
    rig.assert_accounted()


def test_past_the_spool_limit_a_batch_is_refused_507_naming_the_variable(
    tmp_path: Path
) -> None:
    rig = _stalled(tmp_path, spool_max_bytes=300)
    rig.engine.accept(rig.records(4))
    parked, refusals = 0, []
    for _ in range(10):  # about 150 bytes on disk each
        try:
            rig.engine.accept(rig.records(2))
            parked += 2
        except BufferFull as exc:
            refusals.append(exc)
    assert parked >= 2
    assert refusals
    assert all(r.refusal is Refusal.STORAGE and r.retry_after_ms > 0 for r in refusals)
    assert "KAFKA_RELAY_SPOOL_MAX_BYTES" in str(refusals[0])
    assert rig.engine.status()["overflow"]["bytes"] <= 300
    assert rig.counts()["rejected"] == 2 * len(refusals)
    rig.assert_accounted()


def test_by_default_the_spool_refuses_507_past_the_batches_shutdown_can_spill(
    tmp_path: Path
) -> None:
    rig = _stalled(tmp_path, function_memory_mb=128)
    batches = rig.engine.status()["overflow"]["limit_batches"]
    rig.engine.accept(rig.records(4))
    for _ in range(batches):
        rig.engine.accept(rig.records(1))
    with pytest.raises(BufferFull) as refused:
        rig.engine.accept(rig.records(1))
    assert refused.value.refusal is Refusal.STORAGE
    assert f"{batches} batches, what SHUTDOWN can read back and spill" in str(refused.value)
    counts = rig.counts()
    assert (counts["spooled"], counts["rejected"]) == (batches, 1)
    rig.assert_accounted()


def test_the_spool_outlives_a_killed_extension_and_the_next_one_delivers_it(
    tmp_path: Path
) -> None:
    dead = _stalled(tmp_path)
    for _ in range(3):
        dead.engine.accept(dead.records(4))
    parked = dead.engine.status()["overflow"]["records"]
    dead.engine.stop()  # what a SIGKILL leaves: the journal and the spool files
    fresh = Rig(tmp_path, limits=SMALL)
    assert fresh.engine.status()["overflow"]["records"] == parked == 8
    fresh.engine.recover_journal()
    _release(fresh)
    assert {m.relay_id for m in fresh.all_sent()} == {f"r{i}" for i in range(1, 13)}
    assert fresh.events("overflow.found")[0]["records"] == 8


def test_shutdown_spills_what_still_waits_on_disk(tmp_path: Path) -> None:
    rig = _stalled(tmp_path)
    rig.engine.accept(rig.records(4))
    rig.step()  # in flight to a broker that never answers
    for _ in range(2):
        rig.engine.accept(rig.records(4))
    draining = threading.Event()

    def time_passes() -> None:  # the flush waits for a broker that never answers, on the clock
        while not draining.wait(0.005):
            rig.clock.advance(5)

    ticker = threading.Thread(target=time_passes)
    ticker.start()
    try:
        report = rig.engine.drain(rig.clock.wall_ms() + 1_000, reason="spindown")
    finally:
        draining.set()
        ticker.join(timeout=5)
    assert report.spilled_at_shutdown == 12
    assert rig.engine.status()["overflow"]["records"] == 0
    assert rig.events("overflow.left_at_shutdown") == []


def test_the_limit_is_what_shutdown_can_spill_within_half_the_free_space_unless_set(
    tmp_path: Path
) -> None:
    stats = os.statvfs(tmp_path)
    free = free_space(tmp_path / "not" / "made" / "yet")
    assert abs(free - stats.f_bavail * stats.f_frsize) < 64 * 1024 * 1024
    base = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}
    tight = buffer_limits(load_config(base), spool_free_bytes=100_000).spool
    assert tight.bytes == 100_000 * SPOOL_DISK_SHARE
    roomy = buffer_limits(load_config(base), spool_free_bytes=free).spool
    assert 0 < roomy.bytes < free * SPOOL_DISK_SHARE
    assert buffer_limits(load_config({**base, "KAFKA_RELAY_SPOOL_MAX_BYTES": "12345"}),
                         spool_free_bytes=free).spool.bytes == 12345
    assert load_config(base).spool_max_bytes is None
    assert load_config({**base, "KAFKA_RELAY_SPOOL_MAX_BYTES": "0"}).spool_max_bytes == 0
    off = _stalled(tmp_path, spool_max_bytes=0)
    off.engine.accept(off.records(4))
    with pytest.raises(BufferFull) as refused:
        off.engine.accept(off.records(1))
    assert refused.value.refusal is Refusal.BUSY
    assert off.engine.status()["overflow"] == {"enabled": False}


def test_without_the_journal_a_batch_parked_on_disk_arrives_byte_for_byte_as_given(
    tmp_path: Path
) -> None:
    # Without the journal (ring batches, or KAFKA_RELAY_JOURNAL=false) a batch is encoded only
    # once the spool takes it.
    rig = _stalled(tmp_path, journal=False)
    rig.engine.accept(rig.records(4))
    rig.step()
    parked = [record for n in range(3)
              for record in rig.records(1, value=bytes([n]) * (n + 1) + b"\x00\xff")]
    rig.engine.accept(parked)
    assert rig.counts()["spooled"] == 3
    _release(rig)
    sent = {m.relay_id: (m.key, m.value) for m in rig.all_sent()}
    assert [sent[r.id] for r in parked] == [(r.key, r.value) for r in parked]
    assert rig.counts()["delivered"] == 7
    rig.assert_accounted()
