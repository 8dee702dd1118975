"""Crash durability: accepted records are journaled before the 202 and a process that dies
without draining leaves them for the next init, which restores them under the same ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kafka_relay.config import load_config
from kafka_relay.delivery import journal as journal_module
from kafka_relay.delivery.journal import FILE_PREFIX, LOCK_NAME
from kafka_relay.spill.codec import parse_spill_lines
from tests.unit.engine_fakes import FakeProducer, Rig


def _segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "journal").glob(f"{FILE_PREFIX}*.ndjson"))


def _stalled(tmp_path: Path, **overrides: Any) -> Rig:
    return Rig(tmp_path, producer=lambda: FakeProducer(hold=True), **overrides)


def _die(rig: Rig) -> None:
    """What a SIGKILL leaves: no drain, the files, a free lock."""
    rig.engine.stop()


def test_an_accepted_batch_is_in_the_journal_before_accept_returns(tmp_path: Path) -> None:
    rig = _stalled(tmp_path)
    records = rig.records(3)
    rig.engine.accept(records)
    (segment,) = _segments(tmp_path)
    header, *lines = segment.read_text().splitlines()
    assert json.loads(header) == {"format": "kafka-relay-journal", "version": 1, "recovered": 0}
    assert [json.loads(line)["id"] for line in lines] == ["r1", "r2", "r3"]
    assert rig.engine.status()["journal"]["records"] == 3


def test_a_segment_is_deleted_once_every_record_in_it_settled(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.accept(rig.records(4))
    assert len(_segments(tmp_path)) == 1
    rig.step(2)  # produced, then delivered
    assert rig.counts()["delivered"] == 4
    assert _segments(tmp_path) == []
    rig.engine.accept(rig.records(2))  # a new segment for the next batch
    assert len(_segments(tmp_path)) == 1


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
    from kafka_relay.protocol import Outcome  # noqa: PLC0415

    ledger.settle(first[0], Outcome.DELIVERED, None)
    ledger.settle(second[0], Outcome.DELIVERED, None)
    ledger.settle(second[1], Outcome.DELIVERED, None)
    (left,) = _segments(tmp_path)
    assert "r1" in left.read_text()


def test_records_of_a_process_that_died_are_restored_with_their_ids_and_delivered(
    tmp_path: Path,
) -> None:
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(5))
    dead.step()  # in flight at a broker that never answered
    _die(dead)

    fresh = Rig(tmp_path)
    assert fresh.engine.recover_journal() == 5
    assert fresh.counts()["restored"] == 5
    fresh.step(2)
    assert sorted(m.relay_id for m in fresh.all_sent()) == ["r1", "r2", "r3", "r4", "r5"]
    assert fresh.counts()["delivered"] == 5
    fresh.assert_accounted()
    assert _segments(tmp_path) == [], "restored, delivered: nothing left behind"
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
    third = Rig(tmp_path)
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
    assert _segments(tmp_path) == []


def test_a_torn_last_line_is_skipped_and_the_rest_restored(tmp_path: Path) -> None:
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(2))
    _die(dead)
    (segment,) = _segments(tmp_path)
    with segment.open("a") as out:
        out.write('{"id":"r3","topic":"t","key_b64":null,"val')  # killed mid-write
    fresh = Rig(tmp_path)
    assert fresh.engine.recover_journal() == 2
    assert fresh.events("journal.quarantined") == []


def test_a_segment_killed_before_its_header_was_whole_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "journal").mkdir()
    torn = tmp_path / "journal" / f"{FILE_PREFIX}1-abc.ndjson"
    torn.write_text('{"format":"kafka-re')
    fresh = Rig(tmp_path)
    assert fresh.engine.recover_journal() == 0
    assert not torn.exists()
    assert fresh.events("journal.quarantined") == []


def test_a_corrupt_segment_is_quarantined_and_the_others_restored(tmp_path: Path) -> None:
    dead = _stalled(tmp_path)
    dead.engine.accept(dead.records(2))
    _die(dead)
    journal_dir = tmp_path / "journal"
    bad_line = journal_dir / f"{FILE_PREFIX}1-badline.ndjson"
    bad_line.write_text('{"format":"kafka-relay-journal","version":1}\nnot json\n{"id":"x"}\n')
    no_header = journal_dir / f"{FILE_PREFIX}1-noheader.ndjson"
    no_header.write_text('{"id":"r9","topic":"t"}\n')
    newer = journal_dir / f"{FILE_PREFIX}1-newer.ndjson"
    newer.write_text('{"format":"kafka-relay-journal","version":99}\n')

    fresh = Rig(tmp_path)
    assert fresh.engine.recover_journal() == 2
    quarantined = {Path(e["file"]).name for e in fresh.events("journal.quarantined")}
    assert quarantined == {bad_line.name, no_header.name, newer.name}
    assert all(path.with_name(path.name + ".corrupt").exists()
               for path in (bad_line, no_header, newer))
    assert fresh.engine.healthy
    fresh.step(2)
    assert fresh.counts()["delivered"] == 2


def test_foreign_files_are_never_read_or_deleted(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    foreign = {"notes.txt": "mine", "kafka-relay-spool-1.ndjson": '{"id":"s"}\n',
               "kafka-relay-journal-1.json": "not ours either", "data.ndjson": "{}\n"}
    for name, text in foreign.items():
        (journal_dir / name).write_text(text)
    rig = Rig(tmp_path)
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
    assert Rig(tmp_path).engine.recover_journal() == 0


def test_records_restored_from_the_spool_are_journaled_like_accepted_ones(
    tmp_path: Path,
) -> None:
    dead = _stalled(tmp_path)
    dead.spill.spill(dead.records(2), reason="DLQ down")  # parked in the spool
    assert dead.engine.restore_spool() == 2
    _die(dead)
    fresh = Rig(tmp_path)
    assert fresh.engine.recover_journal() == 2
    fresh.step(2)
    assert sorted(m.relay_id for m in fresh.all_sent()) == ["r1", "r2"]


def test_two_live_processes_never_share_a_journal(tmp_path: Path) -> None:
    owner = _stalled(tmp_path)
    owner.engine.accept(owner.records(2))
    second = Rig(tmp_path)
    (locked,) = second.events("journal.locked")
    assert "KAFKA_RELAY_JOURNAL_DIR" in locked["error"]
    assert second.engine.status()["journal"]["enabled"] is False
    assert second.engine.recover_journal() == 0, "never takes a live process's records"
    second.engine.accept(second.records(1))  # still accepts, without durability
    assert len(_segments(tmp_path)) == 1
    holder = (tmp_path / "journal" / LOCK_NAME).read_text()
    assert holder.isdigit()


def test_a_journal_write_that_fails_is_logged_and_records_are_still_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    rig = _stalled(tmp_path)
    monkeypatch.setattr(journal_module, "_write_all", full)
    rig.engine.accept(rig.records(2))
    assert rig.engine.depth()[0] == 2
    (failed,) = rig.events("journal.write_failed")
    assert "No space left" in failed["error"]
    assert rig.engine.status()["journal"]["enabled"] is False


def test_journal_off_writes_nothing(tmp_path: Path) -> None:
    rig = _stalled(tmp_path, journal=False)
    rig.engine.accept(rig.records(2))
    assert not (tmp_path / "journal").exists()
    assert rig.engine.status()["journal"] == {"enabled": False}


def test_journal_configuration_from_the_environment(tmp_path: Path) -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}
    assert load_config(base).journal is True
    assert load_config({**base, "TMPDIR": "/x"}).journal_dir == Path("/x/kafka-relay-journal")
    config = load_config({**base, "KAFKA_RELAY_JOURNAL": "off",
                          "KAFKA_RELAY_JOURNAL_DIR": str(tmp_path)})
    assert (config.journal, config.journal_dir) == (False, tmp_path)
    with pytest.raises(Exception, match="KAFKA_RELAY_JOURNAL"):
        load_config({**base, "KAFKA_RELAY_JOURNAL": "maybe"})
