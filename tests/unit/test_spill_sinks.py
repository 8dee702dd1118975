"""Spill sinks: an ordered chain with a typed result, a spool that reads and deletes only its
own files, and log lines streamed one at a time."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from kafka_relay.config import load_config
from kafka_relay.delivery.ledger import Ledger, Limits
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.codec import parse_spill_lines, read_ndjson, spill_lines
from kafka_relay.spill.sinks import LogSink, SpillChain, SpillKind, SpillResult, SpoolSink


def _records(count: int, size: int = 10) -> list[Record]:
    return [Record(id=f"r{i}", topic="t", key=b"k", value=b"v" * size,
                   headers=(("h", b"\x00"),), timestamp_ms=1, request_id="req")
            for i in range(count)]


def _events(log: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line]
    return [e for e in lines if e.get("event") == name]


class _FailingS3:
    def put_object(self, **_: Any) -> None:
        raise ConnectionError("no route to S3")


def _chain(tmp_path: Path, log: io.StringIO, **env: str) -> SpillChain:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "x:9092",
                          "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool"), **env})
    return SpillChain.from_config(config, JsonLogger(stream=log), s3_client_factory=_FailingS3)


def test_an_s3_failure_falls_to_the_spool_and_the_result_says_spooled(tmp_path: Path) -> None:
    log = io.StringIO()
    result = _chain(tmp_path, log, KAFKA_RELAY_SPILL_BUCKET="b").spill(_records(2), reason="x")
    assert (result.kind, result.count, result.spooled) == (SpillKind.SPOOL, 2, True)
    assert Path(result.location).name.startswith("kafka-relay-spool-")
    assert _events(log, "spill.s3_failed")[0]["error"] == "no route to S3"


@pytest.mark.parametrize(("final", "retry_later"), [(True, True), (False, False)])
def test_at_shutdown_or_when_retrying_cannot_help_the_spool_is_skipped(
    tmp_path: Path, final: bool, retry_later: bool
) -> None:
    log = io.StringIO()
    chain = _chain(tmp_path, log)
    chain.final = final
    result = chain.spill(_records(3), reason="x", retry_later=retry_later)
    assert (result.kind, result.location, result.count) == (SpillKind.LOG, "log", 3)
    assert not (tmp_path / "spool").exists()
    assert [r.id for r in parse_spill_lines(log.getvalue().splitlines()).records] == [
        "r0", "r1", "r2"]


def test_the_ledger_counts_spooled_and_spilled_by_the_result_type() -> None:
    ledger = Ledger(Limits(10, 10**6), retry_after_ms=100)
    records = _records(3)
    ledger.accept(records)
    ledger.settle_spilled(records[:2], SpillResult(SpillKind.SPOOL, "/tmp/x", 2))
    ledger.settle_spilled(records[2:], SpillResult(SpillKind.S3, "s3://b/k", 1))
    counts = ledger.counts.as_dict()
    assert (counts["spooled"], counts["spilled"]) == (2, 1)
    assert ledger.state().unaccounted == 0


def test_spool_files_carry_a_header_and_come_back_once(tmp_path: Path) -> None:
    log = io.StringIO()
    spool = SpoolSink(tmp_path, JsonLogger(stream=log))
    result = spool.write(_records(2), reason="dlq down")
    first_line = Path(result.location).read_text().splitlines()[0]
    assert json.loads(first_line)["format"] == "kafka-relay-spool"
    assert [r.id for r in read_ndjson(Path(result.location).read_text())] == ["r0", "r1"]
    assert [r.id for r in spool.take()] == ["r0", "r1"]
    assert spool.take() == []
    assert list(tmp_path.iterdir()) == []


def test_spool_files_written_in_one_millisecond_come_back_in_the_order_written(
    tmp_path: Path,
) -> None:
    spool = SpoolSink(tmp_path, JsonLogger(stream=io.StringIO()), wall_ms=lambda: 1_000)
    records = _records(40)
    for record in records:
        spool.write([record], reason="dlq down")
    assert [r.id for r in spool.take()] == [r.id for r in records]


def test_the_spool_dir_is_scanned_at_the_first_take_and_after_spooling_only(
        tmp_path: Path) -> None:
    """Every invocation takes the spool back; the directory is read only when it can hold
    something new: at start (an earlier environment's files) and after this sink wrote."""
    earlier = SpoolSink(tmp_path, JsonLogger(stream=io.StringIO()), wall_ms=lambda: 1)
    earlier.write(_records(1), reason="x")
    spool = SpoolSink(tmp_path, JsonLogger(stream=io.StringIO()), wall_ms=lambda: 2)
    assert [r.id for r in spool.take()] == ["r0"]
    # Another environment sharing the directory spools meanwhile: read at the next start
    # (or with this sink's own next spool), not by every invocation's take.
    SpoolSink(tmp_path, JsonLogger(stream=io.StringIO()), wall_ms=lambda: 1).write(
        _records(2)[1:], reason="x")
    assert spool.take() == []
    spool.write(_records(3)[2:], reason="x")
    assert [r.id for r in spool.take()] == ["r1", "r2"]
    assert spool.take() == []


def test_foreign_files_in_the_spool_dir_are_never_read_or_deleted(tmp_path: Path) -> None:
    theirs = tmp_path / "events.ndjson"
    theirs.write_text('{"id":"x","topic":"t"}\n')
    lookalike = tmp_path / "kafka-relay-spool-notes.txt"
    lookalike.write_text("mine")
    spool = SpoolSink(tmp_path, JsonLogger(stream=io.StringIO()))
    spool.write(_records(1), reason="x")
    assert [r.id for r in spool.take()] == ["r0"]
    assert theirs.read_text() == '{"id":"x","topic":"t"}\n'
    assert lookalike.read_text() == "mine"


@pytest.mark.parametrize("content", [
    "{not json\n",
    '{"id":"r9","topic":"t"}\n',  # no header: not ours after all
    '{"format":"kafka-relay-spool","version":99}\n',
    '{"format":"kafka-relay-spool","version":1}\n{"topic":"t"}\n',
    "\udcff",
    '{"format":"kafka-relay-spool","version":1}\n' + "[" * 100_000 + "]" * 100_000 + "\n",
])
def test_a_corrupt_own_file_is_quarantined_and_the_rest_restored(
    tmp_path: Path, content: str
) -> None:
    log = io.StringIO()
    spool = SpoolSink(tmp_path, JsonLogger(stream=log), wall_ms=iter(range(10, 99)).__next__)
    good = spool.write(_records(1), reason="x")
    bad = tmp_path / "kafka-relay-spool-0000000000001-corrupt.ndjson"
    bad.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert [r.id for r in spool.take()] == ["r0"]
    assert not Path(good.location).exists()
    assert not bad.exists()
    assert (tmp_path / (bad.name + ".corrupt")).exists()
    (event,) = _events(log, "spool.quarantined")
    assert event["file"] == str(bad)
    again = SpoolSink(tmp_path, JsonLogger(stream=log))  # the next start scans the directory
    assert again.take() == [], "a quarantined file is not read again"


def test_an_unreadable_spool_dir_is_logged_not_raised(tmp_path: Path) -> None:
    log = io.StringIO()
    file_not_dir = tmp_path / "spool"
    file_not_dir.write_text("x")
    assert SpoolSink(file_not_dir, JsonLogger(stream=log)).take() == []


class _DiesAfter:
    """A stream that takes ``lines`` writes, then the process is 'killed'."""

    def __init__(self, lines: int) -> None:
        self.written: list[str] = []
        self._left = lines

    def write(self, text: str) -> int:
        if self._left == 0:
            raise KeyboardInterrupt("SIGKILL")
        self._left -= 1
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        return


def test_log_lines_are_streamed_so_a_kill_mid_spill_keeps_what_was_written() -> None:
    records = _records(30, size=20_000)  # ~27 KB of JSON each: several packed lines
    expected_lines = len(list(spill_lines(records, reason="x")))
    assert expected_lines >= 4
    stream = _DiesAfter(2)
    with pytest.raises(KeyboardInterrupt):
        LogSink(JsonLogger(stream=stream)).write(records, reason="x")  # type: ignore[arg-type]
    kept = parse_spill_lines("".join(stream.written).splitlines()).records
    assert 0 < len(kept) < len(records)
    assert [r.id for r in kept] == [r.id for r in records[:len(kept)]]
