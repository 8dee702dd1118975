"""Crash durability: accepted records are journaled before the 202 and a process that dies
without draining leaves them for the next init, which restores them under the same ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kafka_relay.config import load_config
from kafka_relay.delivery import journal as journal_module
from kafka_relay.delivery.journal import (
    _COMMIT,
    _FRAME,
    FILE_PREFIX,
    LOCK_NAME,
    PYTHON,
    VERSION,
    _read_segment,
    decode,
    encode,
)
from kafka_relay.delivery.ledger import BufferFull
from kafka_relay.protocol import Outcome, Refusal
from kafka_relay.record import Record
from kafka_relay.spill.codec import parse_spill_lines
from tests.unit.engine_fakes import FakeProducer, Rig


def _segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "journal").glob(f"{FILE_PREFIX}*.bin"))


def _journaled(tmp_path: Path) -> list[str]:
    """Ids a next init would restore."""
    return [r.id for path in _segments(tmp_path) for r in _read_segment(path)[0]]


def _header(path: Path) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(path.read_bytes().split(b"\n", 1)[0])
    return header


def _stalled(tmp_path: Path, **overrides: Any) -> Rig:
    return Rig(tmp_path, producer=lambda: FakeProducer(hold=True),
               **{"journal": True, **overrides})


def _delivering(tmp_path: Path) -> Rig:
    return Rig(tmp_path, journal=True)


def _die(rig: Rig) -> None:
    """What a SIGKILL leaves: no drain, the files, a free lock."""
    rig.engine.stop()


def test_an_accepted_batch_is_in_the_journal_before_accept_returns(tmp_path: Path) -> None:
    rig = _stalled(tmp_path)
    records = rig.records(3)
    rig.engine.accept(records)
    (segment,) = _segments(tmp_path)
    assert _header(segment) == {"format": "kafka-relay-journal", "version": VERSION,
                                "python": PYTHON, "recovered": 0}
    assert _journaled(tmp_path) == ["r1", "r2", "r3"]
    assert rig.engine.status()["journal"]["records"] == 3


def test_the_open_segment_is_emptied_once_every_record_in_it_settled(tmp_path: Path) -> None:
    rig = _delivering(tmp_path)
    rig.engine.accept(rig.records(4))
    (segment,) = _segments(tmp_path)
    rig.step(2)  # produced, then delivered
    assert rig.counts()["delivered"] == 4
    assert _segments(tmp_path) == [segment]
    assert segment.read_bytes().count(b"\n") == 1, "truncated back to its header"
    rig.engine.accept(rig.records(2))  # the same file takes the next batch
    assert _segments(tmp_path) == [segment]
    assert _journaled(tmp_path) == ["r5", "r6"]


def test_only_fully_settled_segments_go_when_segments_rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 1)  # a segment per batch
    rig = _stalled(tmp_path)
    first, second = rig.records(2), rig.records(2)
    rig.engine.accept(first)
    rig.engine.accept(second)
    assert len(_segments(tmp_path)) == 2
    ledger = rig.engine._ledger

    ledger.settle([second[0]], Outcome.DELIVERED)
    ledger.settle([first[0]], Outcome.DELIVERED)
    assert len(_segments(tmp_path)) == 2, "one record of each still unsettled"
    ledger.settle([first[1]], Outcome.DELIVERED)
    (left,) = _segments(tmp_path)  # the rotated one went
    assert [r.id for r in _read_segment(left)[0]] == ["r3", "r4"]


def test_records_of_a_process_that_died_are_restored_with_their_ids_and_delivered(
    tmp_path: Path,
) -> None:
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(5))
    dead.step()  # in flight at a broker that never answered
    _die(dead)

    fresh = _delivering(tmp_path)
    assert fresh.engine.recover_journal() == 5
    assert fresh.counts()["restored"] == 5
    fresh.step(2)
    assert sorted(m.relay_id for m in fresh.all_sent()) == ["r1", "r2", "r3", "r4", "r5"]
    assert fresh.counts()["delivered"] == 5
    fresh.assert_accounted()
    assert _journaled(tmp_path) == [], "restored, delivered: nothing left to restore"
    assert len(_segments(tmp_path)) == 1, "the dead process's segment is gone"
    assert fresh.events("journal.restored")[0]["records"] == 5


def test_restored_records_are_journaled_again_so_a_second_death_loses_nothing(
    tmp_path: Path,
) -> None:
    first = _stalled(tmp_path)
    first.engine.accept(first.records(3))
    _die(first)
    second = _stalled(tmp_path)
    assert second.engine.recover_journal() == 3
    _die(second)
    third = _delivering(tmp_path)
    assert third.engine.recover_journal() == 3
    third.step(2)
    assert third.counts()["delivered"] == 3
    third.assert_accounted()


def test_records_that_kill_the_process_each_time_are_spilled_after_three_restores(
    tmp_path: Path,
) -> None:
    rig = _stalled(tmp_path)
    rig.engine.accept(rig.records(2))
    for _ in range(3):
        _die(rig)
        rig = _stalled(tmp_path)
        assert rig.engine.recover_journal() == 2
        assert rig.counts()["spilled"] == 0
    _die(rig)
    last = _stalled(tmp_path)
    assert last.engine.recover_journal() == 2
    assert (last.counts()["restored"], last.counts()["spilled"]) == (2, 2)
    spilled = parse_spill_lines(last.log.getvalue().splitlines()).records
    assert sorted(r.id for r in spilled) == ["r1", "r2"]
    last.assert_accounted()
    assert _journaled(tmp_path) == []


def test_a_torn_last_frame_is_skipped_and_the_rest_restored(tmp_path: Path) -> None:
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(2))
    _die(dead)
    (segment,) = _segments(tmp_path)
    with segment.open("ab") as out:
        out.write(b"".join(encode(dead.records(3)))[:-7])  # killed mid-write
    fresh = _delivering(tmp_path)
    assert fresh.engine.recover_journal() == 2
    assert len(fresh.events("journal.torn_tail")) == 1
    assert fresh.events("journal.quarantined") == []


def test_a_segment_killed_before_its_header_was_whole_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "journal").mkdir()
    torn = tmp_path / "journal" / f"{FILE_PREFIX}1-abc.bin"
    torn.write_text('{"format":"kafka-re')
    fresh = _delivering(tmp_path)
    assert fresh.engine.recover_journal() == 0
    assert not torn.exists()
    assert fresh.events("journal.quarantined") == []


def test_a_corrupt_segment_is_quarantined_and_the_others_restored(tmp_path: Path) -> None:
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(2))
    _die(dead)
    journal_dir = tmp_path / "journal"
    header = json.dumps({"format": "kafka-relay-journal", "version": VERSION, "python": PYTHON})
    frame = b"".join(encode(dead.records(1)))
    mark = _FRAME.pack(_COMMIT, len(frame))
    bad_payload = journal_dir / f"{FILE_PREFIX}1-badpayload.bin"
    bad_payload.write_bytes(f"{header}\n".encode() + frame[:8] + b"\xff" * (len(frame) - 8)
                            + mark)
    no_header = journal_dir / f"{FILE_PREFIX}1-noheader.bin"
    no_header.write_bytes(b'{"id":"r9","topic":"t"}\n' + frame + mark)
    other_python = journal_dir / f"{FILE_PREFIX}1-otherpython.bin"
    other_python.write_bytes(header.replace(PYTHON, "2.7").encode() + b"\n" + frame + mark)
    older = journal_dir / f"{FILE_PREFIX}1-version1.bin"  # no commit marks: not read
    older.write_bytes(header.replace(f'"version": {VERSION}', '"version": 1').encode() + b"\n"
                      + frame)

    fresh = _delivering(tmp_path)
    assert fresh.engine.recover_journal() == 2
    quarantined = {Path(e["file"]).name: e["error"]
                   for e in fresh.events("journal.quarantined")}
    broken = (bad_payload, no_header, other_python, older)
    assert quarantined.keys() == {path.name for path in broken}
    assert "running the release and runtime that wrote it" in quarantined[older.name]
    assert all(path.with_name(path.name + ".corrupt").exists() for path in broken)
    assert fresh.engine.gauge().failure is None
    fresh.step(2)
    assert fresh.counts()["delivered"] == 2


def test_bytes_after_the_last_committed_batch_are_skipped_and_logged(tmp_path: Path) -> None:
    """A kill mid-write leaves a batch without its commit mark, and whatever may follow it
    is not a batch either: the committed batches before it come back, nothing of the rest."""
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(2))
    _die(dead)
    (segment,) = _segments(tmp_path)
    frame = b"".join(encode(dead.records(3)))
    with segment.open("ab") as out:
        out.write(frame + b"garbage!" + _FRAME.pack(_COMMIT, len(frame)))
    fresh = _delivering(tmp_path)
    assert fresh.engine.recover_journal() == 2
    (torn,) = fresh.events("journal.torn_tail")
    assert (torn["bytes"], torn["restored"]) == (len(frame) + 16, 2)
    assert fresh.events("journal.quarantined") == []


def test_foreign_files_are_never_read_or_deleted(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    foreign = {"notes.txt": "mine", "kafka-relay-spool-1.ndjson": '{"id":"s"}\n',
               "kafka-relay-journal-1.json": "not ours either", "data.bin": "{}\n"}
    for name, text in foreign.items():
        (journal_dir / name).write_text(text)
    rig = _delivering(tmp_path)
    assert rig.engine.recover_journal() == 0
    rig.engine.accept(rig.records(2))
    rig.engine.drain(rig.clock.now_ms + 250, reason="spindown")  # spill at once
    assert {p.name: p.read_text() for p in journal_dir.iterdir()} == foreign
    assert rig.events("journal.quarantined") == []


def test_a_clean_shutdown_leaves_no_journal_behind(tmp_path: Path) -> None:
    rig = _stalled(tmp_path)
    rig.engine.accept(rig.records(3))
    rig.step()
    report = rig.engine.drain(rig.clock.now_ms + 250, reason="spindown")  # spill at once
    assert (report.spilled_at_shutdown, report.unaccounted) == (3, 0)
    assert not (tmp_path / "journal").exists()
    assert _delivering(tmp_path).engine.recover_journal() == 0


def test_records_restored_from_the_spool_are_journaled_like_accepted_ones(
    tmp_path: Path,
) -> None:
    dead = _stalled(tmp_path)
    dead.spill.spill(dead.records(2), reason="DLQ down")  # parked in the spool
    assert dead.engine.restore_spool() == 2
    _die(dead)
    fresh = _delivering(tmp_path)
    assert fresh.engine.recover_journal() == 2
    fresh.step(2)
    assert sorted(m.relay_id for m in fresh.all_sent()) == ["r1", "r2"]


def test_two_live_processes_never_share_a_journal(tmp_path: Path) -> None:
    owner = _stalled(tmp_path)
    owner.engine.accept(owner.records(2))
    second = _delivering(tmp_path)
    (locked,) = second.events("journal.locked")
    assert "KAFKA_RELAY_JOURNAL_DIR" in locked["error"]
    assert second.engine.status()["journal"]["enabled"] is False
    assert second.engine.recover_journal() == 0, "never takes a live process's records"
    with pytest.raises(BufferFull) as refused:  # never accepted without durability
        second.engine.accept(second.records(1))
    assert refused.value.refusal is Refusal.STORAGE
    assert len(second.events("journal.locked")) == 1, "logged once, not per batch"
    assert len(_segments(tmp_path)) == 1
    holder = (tmp_path / "journal" / LOCK_NAME).read_text()
    assert holder.isdigit()


def test_a_journal_that_cannot_write_refuses_batches_logs_once_and_resumes_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_all = journal_module._write_all

    def full(fd: int, parts: list[bytes], size: int) -> None:
        raise OSError(28, "No space left on device")

    rig = _stalled(tmp_path)
    kept = rig.records(2)
    rig.engine.accept(kept)
    monkeypatch.setattr(journal_module, "_write_all", full)
    for _ in range(3):
        with pytest.raises(BufferFull, match=r"journal cannot write.*No space left") as refused:
            rig.engine.accept(rig.records(2))
        assert refused.value.refusal is Refusal.STORAGE
        assert refused.value.retry_after_ms > 0
    assert rig.engine.gauge().pending == 2, "nothing of a refused batch is owned"
    (failed,) = rig.events("journal.write_failed")
    assert "No space left" in failed["error"]
    status = rig.engine.status()["journal"]
    assert (status["enabled"], status["records"]) == (False, 2)
    assert "No space left" in status["error"]
    monkeypatch.setattr(journal_module, "_write_all", write_all)  # space again
    kept += rig.records(3)
    rig.engine.accept(kept[2:])
    assert rig.engine.status()["journal"]["error"] is None
    assert len(rig.events("journal.resumed")) == 1
    assert rig.engine.gauge().pending == 5
    assert sorted(_journaled(tmp_path)) == sorted(r.id for r in kept)
    assert rig.counts()["accepted"] == 5


def test_a_journal_directory_that_cannot_be_created_refuses_until_it_can(
    tmp_path: Path
) -> None:
    blocker = tmp_path / "journal"
    blocker.write_text("a file where the directory should be")
    rig = _delivering(tmp_path)
    with pytest.raises(BufferFull, match="journal cannot write"):
        rig.engine.accept(rig.records(1))
    assert len(rig.events("journal.unavailable")) == 1
    blocker.unlink()
    rig.engine.accept(rig.records(1))
    assert len(_segments(tmp_path)) == 1
    assert rig.engine.status()["journal"]["enabled"] is True


def test_journal_off_writes_nothing(tmp_path: Path) -> None:
    rig = _stalled(tmp_path, journal=False)
    rig.engine.accept(rig.records(2))
    assert not (tmp_path / "journal").exists()
    assert rig.engine.status()["journal"] == {"enabled": False}


def test_journal_configuration_from_the_environment(tmp_path: Path) -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}
    assert load_config(base).journal is True, "on by default: nothing accepted is lost"
    assert load_config({**base, "KAFKA_RELAY_JOURNAL": "off"}).journal is False
    assert load_config({**base, "TMPDIR": "/x"}).journal_dir == Path("/x/kafka-relay-journal")
    config = load_config({**base, "KAFKA_RELAY_JOURNAL": "off",
                          "KAFKA_RELAY_JOURNAL_DIR": str(tmp_path)})
    assert (config.journal, config.journal_dir) == (False, tmp_path)
    with pytest.raises(Exception, match="KAFKA_RELAY_JOURNAL"):
        load_config({**base, "KAFKA_RELAY_JOURNAL": "maybe"})


def test_a_frame_rebuilds_every_field_a_record_is_produced_from(tmp_path: Path) -> None:
    plain = Record(id="a-1", topic="t", key=None, value=None)
    full = Record(id="a-2", topic="x.y_z-1", key=b"", value=b"\x00\xff" * 300,
                  headers=(("h", b"v"), ("\ud800", b"")), timestamp_ms=2**63 - 1,
                  request_id="req-\u00e9", accepted_ms=1_767_225_500_000)
    full.attempts, full.first_failed_ms = 2, 1_767_225_600_000
    full.last_error, full.dlq_error = "MSG_TIMED_OUT", "TOPIC_AUTHORIZATION_FAILED"
    head, payload = encode([plain, full])
    assert head[:4] == b"KRJ1"
    fields = ("id", "topic", "key", "value", "headers", "timestamp_ms", "request_id",
              "attempts", "first_failed_ms", "last_error", "dlq_error", "accepted_ms", "size")
    got = decode(payload)
    assert [[getattr(r, f) for f in fields] for r in got] == [
        [getattr(r, f) for f in fields] for r in (plain, full)]
