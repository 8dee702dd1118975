"""The logs CLI turns sandbox/CloudWatch lines into invocation rows and relay events."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kafka_relay.record import Record
from kafka_relay.spill.codec import spill_lines
from kafka_relay.tools.logs import (
    FileTail,
    Invocation,
    LogLine,
    LogParser,
    LogsError,
    main,
    parse_time,
)
from kafka_relay.tools.replayer import read_log_file

REQ1 = "0b1c2d3e-0000-4000-8000-000000000001"
REQ2 = "0b1c2d3e-0000-4000-8000-000000000002"


def _relay(event: str, level: str = "INFO", **fields: object) -> str:
    return json.dumps({"ts": 1767225600.5, "level": level, "logger": "kafka-relay",
                       "event": event, **fields})


def _report(request_id: str, *, init: bool) -> str:
    line = (f"REPORT RequestId: {request_id}\tDuration: 12.34 ms\tBilled Duration: 13 ms\t"
            "Memory Size: 256 MB\tMax Memory Used: 80 MB\t")
    return line + ("Init Duration: 123.45 ms\t" if init else "")


def _done(request_id: str, accepted: int) -> str:
    return _relay("invocation.done", request_id=request_id, accepted=accepted,
                  delivered=accepted - 1, dead_lettered=1, spilled=0, pending=0, flush_ms=3.5)


def _spilled_record() -> Record:
    record = Record(id="env1-00000007", topic="rss.events", key=b"k", value=b"\x00" * 400_000,
                    headers=(("source", b"feed"),), timestamp_ms=1767225600000)
    record.dlq_error = "TOPIC_AUTHORIZATION_FAILED: denied"
    return record


SANDBOX = [
    f"START RequestId: {REQ1} Version: $LATEST",
    _relay("init.ready", port=4195),
    "fetched 10 items from the feed",
    '{"level": "INFO", "message": "handler JSON output, not the relay\'s"}',
    _relay("dead_letter.routed", "WARNING", request_id=REQ1, id="env1-00000003",
           topic="rss.events", error="TOPIC_EXCEPTION: bad"),
    _done(REQ1, 10),
    '{"_aws":{"Timestamp":1767225600500,"CloudWatchMetrics":[]},"RecordsAccepted":10}',
    f"END RequestId: {REQ1}",
    _report(REQ1, init=True),
    f"START RequestId: {REQ2} Version: $LATEST",
    _done(REQ2, 4),
    _relay("flush.incomplete", "WARNING", request_id=REQ2, remaining=2, budget_ms=500),
    f"END RequestId: {REQ2}",
    _report(REQ2, init=False),
    _relay("spill.log", "WARNING", records=1, reason="shutdown (spindown) before delivery"),
    *spill_lines([_spilled_record()], reason="shutdown (spindown) before delivery"),
    _relay("shutdown.summary", reason="spindown", accepted=14, delivered=12, spilled=1),
    _relay("invocation.done", accepted=0, delivered=0, dead_lettered=0, spilled=0, pending=0,
           flush_ms=0.0),
]


def _parsed(lines: list[str]) -> LogParser:
    parser = LogParser()
    parser.feed_all(LogLine(line) for line in lines)
    return parser


def test_report_with_init_duration_is_a_cold_start_and_without_is_warm() -> None:
    cold, warm = _parsed(SANDBOX).invocations
    assert (cold.duration_ms, cold.billed_ms, cold.init_ms) == (12.34, 13.0, 123.45)
    assert (cold.memory_mb, cold.max_memory_mb, cold.cold_start) == (256, 80, True)
    assert (warm.init_ms, warm.cold_start, warm.reported, warm.ended) == (None, False, True, True)


def test_report_lines_parse_with_prefixes_spaces_and_a_status() -> None:
    line = (f"2026-01-01T00:00:00.000Z 2026/01/01/[$LATEST]abc REPORT RequestId: {REQ1} "
            "Duration: 3000.00 ms Billed Duration: 3000 ms Memory Size: 128 MB "
            "Max Memory Used: 90 MB Status: timeout")
    (invocation,) = _parsed([line]).invocations
    assert (invocation.request_id, invocation.duration_ms, invocation.billed_ms) == (
        REQ1, 3000.0, 3000.0)
    assert (invocation.max_memory_mb, invocation.status) == (90, "timeout")


def test_relay_counts_join_their_invocation_by_request_id_in_any_order() -> None:
    lines = [f"START RequestId: {REQ1} Version: $LATEST", f"START RequestId: {REQ2} Version: 1",
             _done(REQ2, 4), _report(REQ1, init=False), _done(REQ1, 10)]
    first, second = _parsed(lines).invocations
    assert first.request_id == REQ1
    assert first.relay is not None
    assert first.relay["accepted"] == 10
    assert second.relay == {"accepted": 4, "delivered": 3, "dead_lettered": 1, "spilled": 0,
                            "pending": 0, "flush_ms": 3.5}
    assert not second.reported


def test_relay_events_are_warnings_errors_and_summaries_not_info_emf_or_handler_lines() -> None:
    parser = _parsed(SANDBOX)
    assert [e.event for e in parser.events] == [
        "dead_letter.routed", "flush.incomplete", "spill.log", "shutdown.summary"]
    dead_letter = parser.events[0]
    assert dead_letter.request_id == REQ1
    assert dead_letter.fields == {"id": "env1-00000003", "topic": "rss.events",
                                  "error": "TOPIC_EXCEPTION: bad"}
    assert dead_letter.ts_ms == 1767225600500
    assert parser.emf_lines == 1
    # The summary's trailing invocation.done has no request id: it makes no row.
    assert len(parser.invocations) == 2


def test_init_errors_are_events() -> None:
    parser = _parsed([_relay("init.error", "ERROR", error_type="Extension.ConfigError",
                             error="KAFKA_BOOTSTRAP_SERVERS is not set")])
    (event,) = parser.events
    assert (event.level, event.event, event.fields["error_type"]) == (
        "ERROR", "init.error", "Extension.ConfigError")


def test_feed_returns_an_invocation_when_its_report_arrives() -> None:
    parser = LogParser()
    assert parser.feed(LogLine(f"START RequestId: {REQ1} Version: $LATEST")) == []
    assert parser.feed(LogLine(_done(REQ1, 2))) == []
    (row,) = parser.feed(LogLine(_report(REQ1, init=False), timestamp_ms=5))
    assert isinstance(row, Invocation)
    assert row.request_id == REQ1
    assert row.relay is not None


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env={}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _log_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "sandbox.log"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_json_output_has_rows_events_totals_and_spill_counts(tmp_path: Path) -> None:
    code, out, _ = _run(["--file", str(_log_file(tmp_path, SANDBOX)), "--json"])
    assert code == 0
    summary = json.loads(out)
    assert set(summary) == {"invocations", "events", "totals", "spill"}
    first = summary["invocations"][0]
    assert first["request_id"] == REQ1
    assert (first["cold_start"], first["init_ms"], first["relay"]["dead_lettered"]) == (
        True, 123.45, 1)
    assert summary["events"][1] == {
        "ts_ms": 1767225600500, "level": "WARNING", "event": "flush.incomplete",
        "request_id": REQ2, "fields": {"remaining": 2, "budget_ms": 500}}
    assert summary["totals"] == {"invocations": 2, "cold_starts": 1, "accepted": 14,
                                 "delivered": 12, "dead_lettered": 2, "spilled": 0}
    chunks = len(list(spill_lines([_spilled_record()], reason="")))
    assert chunks > 1
    assert summary["spill"] == {"lines": chunks, "records": 1, "written_to": None}


def test_text_output_shows_one_row_per_invocation_then_the_events(tmp_path: Path) -> None:
    code, out, _ = _run(["--file", str(_log_file(tmp_path, SANDBOX))])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["REQUEST", "ID", "DURATION"]
    assert lines[1].split()[:9] == [REQ1, "12.34", "ms", "13", "ms", "123.5", "ms", "80/256", "10"]
    assert lines[2].split()[5] == "-"  # warm start: no init duration
    assert "record.dead_letter request_id=" + REQ1 in out
    assert "shutdown.summary reason=spindown" in out
    assert "2 invocations (1 cold)" in out


def test_spilled_lines_are_written_for_the_replay_tool(tmp_path: Path) -> None:
    prefixed = [f"2026-01-01T00:00:0{i}Z {line}" for i, line in enumerate(SANDBOX)]
    spilled = tmp_path / "spilled.log"
    code, out, _ = _run(["--file", str(_log_file(tmp_path, prefixed)),
                         "--spilled-out", str(spilled)])
    assert code == 0
    assert f"--log-file {spilled}" in out
    assert len(spilled.read_text(encoding="utf-8").splitlines()) == len(
        list(spill_lines([_spilled_record()], reason="")))
    (batch,) = read_log_file(spilled)
    (record,) = batch.records
    original = _spilled_record()
    assert (record.id, record.value, record.dlq_error) == (
        original.id, original.value, original.dlq_error)


def test_following_a_file_prints_rows_and_events_as_they_are_appended(tmp_path: Path) -> None:
    path = _log_file(tmp_path, SANDBOX[:3])
    rest = "".join(f"{line}\n" for line in SANDBOX[3:])
    clock = iter(range(100))

    def sleep(_: float) -> None:
        # Between polls the sandbox writes more, cut anywhere, often mid-line.
        nonlocal rest
        with open(path, "a", encoding="utf-8") as log:
            log.write(rest[:150_001])
        rest = rest[150_001:]

    out, err = io.StringIO(), io.StringIO()
    code = main(["--file", str(path), "--follow", "--follow-for", "10", "--json"], env={},
                stdout=out, stderr=err, sleep=sleep, monotonic=lambda: float(next(clock)))
    assert code == 0
    assert not rest
    items = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(i["type"], i.get("event") or i.get("request_id")) for i in items] == [
        ("event", "dead_letter.routed"), ("invocation", REQ1), ("event", "flush.incomplete"),
        ("invocation", REQ2), ("event", "spill.log"), ("event", "shutdown.summary")]
    assert items[1]["relay"]["accepted"] == 10


def test_a_file_tail_holds_back_a_half_written_line_while_following(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("one\ntw", encoding="utf-8")
    tail = FileTail(path, follow=True)
    assert [line.message for line in tail.poll()] == ["one"]
    with open(path, "a", encoding="utf-8") as log:
        log.write("o\n")
    assert [line.message for line in tail.poll()] == ["two"]
    assert tail.poll() == []
    assert [line.message for line in FileTail(path).poll()] == ["one", "two"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1767225600000", 1767225600000),
        ("2026-01-01T00:00:00Z", 1767225600000),
        ("2026-01-01T01:00:00+01:00", 1767225600000),
        ("2026-01-01", 1767225600000),
        ("90m", 1767225600000 - 90 * 60_000),
        ("2d", 1767225600000 - 2 * 86_400_000),
    ],
)
def test_times_are_epoch_ms_iso_or_an_age(text: str, expected: int) -> None:
    assert parse_time(text, now_ms=1767225600000) == expected


def test_a_malformed_time_says_which_forms_work() -> None:
    with pytest.raises(LogsError, match=r"epoch milliseconds, ISO 8601 .* 30m"):
        parse_time("yesterday", now_ms=0)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    code, _, err = _run(["--file", str(tmp_path / "absent.log")])
    assert code == 2
    assert "absent.log" in err


def test_time_ranges_apply_to_cloudwatch_not_files(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(["--file", str(_log_file(tmp_path, SANDBOX)), "--start", "1h"])
    assert exit_info.value.code == 2
