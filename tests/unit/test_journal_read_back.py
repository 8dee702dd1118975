"""Records that wait keep no key or value in memory with the journal on: past the first
in-flight window of pending bytes, once handed to librdkafka and while waiting out a retry
backoff, their bytes live in the journal only and are read back (one pread per run of
contiguous frames) for every path that sends or spills them, byte-identical. A read-back
that fails gives those records up loudly, never the ones still in memory."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.fault_schedule import small_disk
from kafka_relay.delivery import journal as journal_module
from kafka_relay.delivery.journal import FRAME_BYTES, Journal, encode_batch
from kafka_relay.delivery.ledger import BufferFull, Ledger, Limits
from kafka_relay.delivery.queue import in_flight_window
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import Outcome, Refusal
from kafka_relay.record import Record
from kafka_relay.spill.codec import parse_spill_lines
from tests.unit.engine_fakes import FakeProducer, Rig, Sent

LIMITS = Limits(records=10_000, bytes=8 * 1024 * 1024)  # a 1 MB window
WINDOW = in_flight_window(LIMITS.bytes)
VALUE = 1000


def _records(rig: Rig, count: int, *, first: int = 0) -> list[Record]:
    """Records whose bytes each differ: a read-back of the wrong bytes cannot pass."""
    return [Record(id=f"r{first + i}", topic="t", key=f"k{first + i}".encode(),
                   value=os.urandom(VALUE), headers=(("h", str(i).encode()),),
                   request_id="req-1") for i in range(count)]


def _copy(records: list[Record]) -> dict[str, tuple[Any, ...]]:
    return {r.id: (r.topic, r.key, r.value, r.headers) for r in records}


def _as_sent(sent: list[Sent]) -> dict[str, tuple[Any, ...]]:
    return {m.relay_id: (m.topic, m.key, m.value,
                         tuple((k, v) for k, v in m.headers.items() if k == "h"))
            for m in sent}


def _in_memory(rig: Rig) -> int:
    """Value bytes the ledger holds (keys stay: they name each record's place in its key's
    order)."""
    return sum(len(r.value or b"") for r in rig.engine._ledger.unsettled.values())


def _stalled(tmp_path: Path, **overrides: Any) -> Rig:
    return Rig(tmp_path, limits=LIMITS, producer=lambda: FakeProducer(hold=True),
               **{"journal": True, **overrides})


def _held(tmp_path: Path, count: int = 1500) -> tuple[Rig, dict[str, tuple[Any, ...]]]:
    """``count`` records accepted at a stalled broker, the first window in librdkafka; what
    each must arrive as."""
    rig = _stalled(tmp_path)
    records = _records(rig, count)
    expected = _copy(records)
    rig.engine.accept(records)
    rig.step()
    return rig, expected


def _release(rig: Rig, rounds: int = 50) -> None:
    rig.producer.hold = False
    for _ in range(rounds):
        if not rig.engine.gauge().pending:
            return
        rig.step()


def test_records_past_the_window_wait_without_their_bytes_and_go_out_byte_identical(
    tmp_path: Path,
) -> None:
    rig = _stalled(tmp_path)
    accepted: list[Record] = []
    expected: dict[str, tuple[Any, ...]] = {}
    for batch in range(30):
        accepted += _records(rig, 100, first=100 * batch)
        expected.update(_copy(accepted[-100:]))
        rig.engine.accept(accepted[-100:])
    assert len(accepted) * VALUE > 2 * WINDOW
    assert _in_memory(rig) <= WINDOW + 2 * VALUE, "only the first window keeps its bytes"
    rig.step()  # the first window goes to librdkafka, which holds its own copy
    assert _in_memory(rig) == 0
    assert rig.engine.gauge().pending_bytes == sum(r.size for r in accepted)
    _release(rig)
    assert rig.counts()["delivered"] == len(accepted)
    assert _as_sent(rig.all_sent()) == expected
    rig.assert_accounted()


def test_with_the_journal_off_every_value_stays_in_memory(tmp_path: Path) -> None:
    rig = _stalled(tmp_path, journal=False)
    records = _records(rig, 3000)
    rig.engine.accept(records)
    rig.step()
    assert _in_memory(rig) == sum(len(r.value or b"") for r in records)


def counted_preads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every ``pread`` from now on."""
    reads: list[int] = []
    pread = os.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counted)
    return reads


def test_a_window_is_read_back_with_one_pread_per_run_of_contiguous_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted_preads(monkeypatch)
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 64 * 1024 * 1024)  # one segment
    rig = _stalled(tmp_path)
    rig.engine.accept(_records(rig, 3000))  # ~3 MB: frames of at most 64 KB, back to back
    rig.step()
    assert reads == []  # the first window kept its bytes
    rig.producer.hold = False
    rig.step(2)  # delivers the first window, then takes the next from the journal
    assert len(reads) == 1
    assert WINDOW <= reads[0] <= WINDOW + 2 * FRAME_BYTES


def test_a_retry_waits_without_its_bytes_and_the_dlq_gets_them_byte_identical(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, limits=LIMITS, journal=True)
    rig.producer.respond = lambda sent: (KafkaError(KafkaError._MSG_TIMED_OUT)
                                         if sent.topic == "t" else None)
    records = _records(rig, 5)
    expected = _copy(records)
    rig.engine.accept(records)
    rig.step(2)  # produced, failed: waiting out the backoff
    assert rig.engine.gauge().counts["retries"] == 5
    assert _in_memory(rig) == 0
    for _ in range(rig.config.max_attempts * 2):
        rig.clock.advance(60_000)
        rig.step(2)
    assert rig.counts()["dead_lettered"] == 5
    dlq = [m for m in rig.all_sent() if m.topic == "dlq.t"]
    assert {i: v[1:] for i, v in _as_sent(dlq).items()} == {
        i: v[1:] for i, v in expected.items()}
    rig.assert_accounted()


def test_a_producer_rebuild_sends_records_whose_bytes_were_dropped_byte_identical(
    tmp_path: Path,
) -> None:
    rig, expected = _held(tmp_path)
    rig.engine.on_client_error(KafkaError(KafkaError._FATAL, fatal=True))
    rig.step()  # purged (REQUEUE), a new producer
    assert len(rig.producers) == 2
    _release(rig)
    assert rig.counts()["delivered"] == 1500
    assert _as_sent(rig.producer.sent) == expected
    rig.assert_accounted()


def test_a_shutdown_spill_reads_the_bytes_back_first(tmp_path: Path) -> None:
    rig, expected = _held(tmp_path)
    report = rig.engine.drain(rig.clock.now_ms + 250, reason="spindown")  # spill at once
    assert (report.spilled_at_shutdown, report.unaccounted) == (1500, 0)
    spilled = parse_spill_lines(rig.log.getvalue().splitlines()).records
    assert {r.id: (r.topic, r.key, r.value, r.headers) for r in spilled} == expected


def test_records_of_a_killed_process_come_back_byte_identical(tmp_path: Path) -> None:
    dead, expected = _held(tmp_path)
    dead.engine.stop()  # what a SIGKILL leaves
    fresh = Rig(tmp_path, limits=LIMITS, journal=True)
    assert fresh.engine.recover_journal() == 1500
    assert _in_memory(fresh) <= WINDOW + 2 * VALUE, "restored records wait without bytes"
    _release(fresh)
    assert _as_sent(fresh.all_sent()) == expected
    fresh.assert_accounted()


def test_an_unlinked_segment_is_still_read_back(tmp_path: Path) -> None:
    rig, expected = _held(tmp_path)
    for path in (tmp_path / "journal").glob("kafka-relay-journal-*.bin"):
        path.unlink()  # someone cleaning /tmp
    _release(rig)
    assert _as_sent(rig.all_sent()) == expected
    assert rig.events("records.lost") == []


def test_a_truncated_segment_loses_only_what_it_held_loudly_and_memory_keeps_the_rest(
    tmp_path: Path,
) -> None:
    rig, expected = _held(tmp_path)
    segment = sorted((tmp_path / "journal").glob("kafka-relay-journal-*.bin"),
                     key=lambda p: p.stat().st_mtime_ns)[0]
    os.truncate(segment, segment.stat().st_size // 2)  # someone else wrote over it
    _release(rig)
    lost = rig.events("records.lost")
    assert rig.events("journal.read_failed")
    gone = sum(e["records"] for e in lost)
    assert rig.engine.status()["unaccounted"] == gone > 0, "counted: never silent"
    delivered = _as_sent(rig.all_sent())
    assert len(delivered) + gone == 1500
    assert delivered == {i: v for i, v in expected.items() if i in delivered}
    assert not {i for e in lost for i in e["ids"]} & set(delivered)
    later = _records(rig, 1500, first=2000)
    rig.producer.hold = True
    rig.engine.accept(later)
    assert _in_memory(rig) == sum(len(r.value or b"") for r in later), (
        "after a failed read-back, records wait in memory")


def test_batches_parked_in_the_outage_spool_come_back_without_their_bytes_and_arrive_whole(
    tmp_path: Path,
) -> None:
    small = Limits(records=10_000, bytes=1_200_000)  # a 150 KB window, memory for ~1,100
    rig = Rig(tmp_path, limits=small, producer=lambda: FakeProducer(hold=True),
              journal=True, spool_max_bytes=10_000_000)
    expected: dict[str, tuple[Any, ...]] = {}
    for batch in range(20):  # 2 MB: most of it parked on disk, in multi-frame files
        records = _records(rig, 100, first=100 * batch)
        expected.update(_copy(records))
        rig.engine.accept(records)
    assert rig.engine.status()["overflow"]["records"] > 0
    rig.step()
    rig.producer.hold = False
    for _ in range(200):
        rig.step()
        rig.engine.restore_spool()  # refilled as memory frees: journaled, bytes dropped
        held = _in_memory(rig)
        assert held <= small.bytes // 8 + 2 * FRAME_BYTES
        if not rig.engine.gauge().pending and not rig.engine.status()["overflow"]["records"]:
            break
    assert _as_sent(rig.all_sent()) == expected
    rig.assert_accounted()


# -- the read-back itself, on random batches -----------------------------------------------

_payload = st.one_of(st.none(), st.binary(max_size=3000))
_record = st.tuples(_payload, _payload,
                    st.lists(st.tuples(st.sampled_from(["a", "b\u00e9"]), st.binary(max_size=8)),
                             max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(_record, min_size=1, max_size=40), min_size=1, max_size=12),
       window=st.sampled_from([1, 2_000, 20_000]),
       segment=st.sampled_from([1, 30_000, 1024 * 1024]),
       frame=st.sampled_from([1, 5_000, FRAME_BYTES]),
       settle=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60),
       take=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30))
def test_whatever_is_pending_reads_back_as_accepted_across_windows_and_retirements(
    *, batches: list[list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]],
    window: int, segment: int, frame: int, settle: list[int], take: list[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("journal")
    journal = Journal(directory, JsonLogger(stream=io.StringIO()))
    assert journal.open()
    ledger = Ledger(LIMITS, retry_after_ms=100, journal=journal)
    ledger.resident.window = window
    expected: dict[str, tuple[Any, ...]] = {}
    number = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal_module, "SEGMENT_BYTES", segment)
        patch.setattr(journal_module, "FRAME_BYTES", frame)
        for batch in batches:
            records = []
            for key, value, headers in batch:
                number += 1
                records.append(Record(id=f"r{number}", topic="t", key=key, value=value,
                                      headers=tuple(headers)))
            expected.update((r.id, (r.key, r.value, r.headers)) for r in records)
            ledger.accept(records)
            # Some settle (their segments retire once empty), some are taken and produced.
            pending = list(ledger.unsettled.values())
            done = [pending[i % len(pending)] for i in settle[:len(batch)] if pending]
            ledger.settle(done, Outcome.DELIVERED)
            with ledger.cond:
                taken = ledger.warm(ledger.queue.take_due(0, take[number % len(take)], window),
                                    taken=True)
            for record in taken:
                if record.id in ledger.unsettled:  # a settled one is skipped by the pump
                    assert (record.key, record.value, record.headers) == expected[record.id]
            ledger.resident.drop(taken)
            ledger.queue.give_back(taken)
        rest = ledger.warm(list(ledger.unsettled.values()))
    assert len(rest) == len(ledger.unsettled)
    for record in rest:
        assert (record.key, record.value, record.headers) == expected[record.id]
    assert ledger.state().unaccounted == 0
    journal.release(remove=True)


def test_a_large_batch_is_framed_in_pieces_that_decode_to_the_whole(tmp_path: Path) -> None:
    records = [Record(id=f"r{i}", topic="t", key=None, value=b"x" * 10_000) for i in range(20)]
    frames = encode_batch(records, sum(r.size for r in records))
    assert frames.counts == [6, 6, 6, 2]  # at most 64 KB of records each
    assert len(frames.parts) == 8
    data = b"".join(frames.parts)
    got = [r.id for start, end in journal_module.frame_payloads(data)
           for r in journal_module.decode(data[start:end])]
    assert got == [r.id for r in records]


def test_a_batch_of_more_frames_than_one_writev_takes_is_journaled_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "_IOV_MAX", 3)
    monkeypatch.setattr(journal_module, "FRAME_BYTES", 1)  # a frame per record
    journal = Journal(tmp_path, JsonLogger(stream=io.StringIO()))
    assert journal.open()
    records = [Record(id=f"r{i}", topic="t", key=None, value=bytes([i]) * 10)
               for i in range(7)]
    journal.append([r.id for r in records], encode_batch(records, 70))
    found, problems = journal.read_back([r.id for r in records])
    assert (found, problems) == ({r.id: (None, r.value) for r in records}, {})
    journal.release(remove=True)


def test_a_record_restored_twice_in_one_batch_reads_back_with_its_neighbours(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, JsonLogger(stream=io.StringIO()))
    assert journal.open()
    twice = Record(id="a", topic="t", key=b"k", value=b"1")
    records = [twice, twice, Record(id="b", topic="t", key=None, value=b"2")]
    journal.append(["a", "a", "b"], encode_batch(records, 5))
    assert journal.read_back(["a", "b"]) == ({"a": (b"k", b"1"), "b": (None, b"2")}, {})
    journal.release(remove=True)


def test_a_batch_the_disk_cannot_hold_leaves_nothing_behind_for_a_restart(
    tmp_path: Path,
) -> None:
    """A batch refused because the disk filled midway (after some of its 64 KB frames were
    written) is cut back off: the space is free for the next batch, and a restart restores
    only what was accepted, never records that were answered 507."""
    with small_disk(tmp_path / "journal", size="256k") as disk:
        if disk is None:
            pytest.skip("no tmpfs can be mounted here")
        rig = _stalled(tmp_path)
        accepted = _records(rig, 20)
        rig.engine.accept(accepted)
        refused = _records(rig, 400, first=20)  # ~400 KB: several frames, the disk ends first
        with pytest.raises(BufferFull) as caught:
            rig.engine.accept(refused)
        after = _records(rig, 20, first=420)
        rig.engine.accept(after)  # the refused batch's frames no longer hold the space
        rig.engine.stop()  # what a SIGKILL leaves
        fresh = Rig(tmp_path, limits=LIMITS, journal=True)
        restored = fresh.engine.recover_journal()
        fresh.engine.stop()
    assert caught.value.refusal is Refusal.STORAGE
    assert restored == len(accepted) + len(after)
