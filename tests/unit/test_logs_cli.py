"""The logs CLI turns sandbox/CloudWatch lines into invocation rows and relay events."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kafka_relay.record import Record
from kafka_relay.spill.codec import spill_lines
from kafka_relay.tools.logs import FileTail, LogsError, main, parse_time
from kafka_relay.tools.replayer import read_log_file
from kafka_relay.tools.table import (
    Invocation,
    LogLine,
    LogParser,
    RelayEvent,
    View,
    format_event,
    summarise,
)

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


def _outcomes(by_request: dict[str, dict[str, int]], at: str = "invocation") -> str:
    return _relay("records.outcomes", at=at, by_request=by_request)


def _emf(**metrics: int) -> str:
    return json.dumps({"_aws": {"Timestamp": 1767225600500, "CloudWatchMetrics": []},
                       "FunctionName": "f", **metrics})


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
    _outcomes({REQ1: {"accepted": 10, "delivered": 9, "dead_lettered": 1}}),
    _done(REQ1, 10),
    _emf(RecordsAccepted=10, RecordsDelivered=9, RecordsDeadLettered=1),
    f"END RequestId: {REQ1}",
    _report(REQ1, init=True),
    f"START RequestId: {REQ2} Version: $LATEST",
    _outcomes({REQ2: {"accepted": 4, "delivered": 2}}),
    _done(REQ2, 4),
    _emf(RecordsAccepted=4, RecordsDelivered=2),
    _relay("flush.incomplete", "WARNING", request_id=REQ2, remaining=2, budget_ms=500),
    f"END RequestId: {REQ2}",
    _report(REQ2, init=False),
    _relay("spill.log", "WARNING", records=1, reason="shutdown (spindown) before delivery"),
    *spill_lines([_spilled_record()], reason="shutdown (spindown) before delivery"),
    _relay("shutdown.summary", reason="spindown", accepted=14, delivered=12, dead_lettered=1,
           spilled=1, spooled=0, restored=0),
    _outcomes({REQ2: {"delivered": 1, "spilled": 1}}, "shutdown"),
    _emf(RecordsDelivered=1, RecordsSpilled=1),
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


def test_outcomes_join_their_invocation_by_request_id_in_any_order() -> None:
    lines = [f"START RequestId: {REQ1} Version: $LATEST", f"START RequestId: {REQ2} Version: 1",
             _outcomes({REQ2: {"accepted": 4, "delivered": 3}}), _report(REQ1, init=False),
             _outcomes({REQ1: {"accepted": 10}, REQ2: {"dead_lettered": 1}}),
             _outcomes({REQ1: {"spilled": 10}}, "shutdown")]
    first, second = _parsed(lines).invocations
    assert (first.request_id, first.counts, first.pending) == (
        REQ1, {"accepted": 10, "spilled": 10}, 0)
    assert second.counts == {"accepted": 4, "delivered": 3, "dead_lettered": 1}
    assert not second.reported


def test_what_settled_at_shutdown_is_counted_in_its_row_and_in_the_final_row() -> None:
    parser = _parsed(SANDBOX)
    summary = summarise(parser, View())
    second = summary["invocations"][1]
    assert second["counts"] == {"accepted": 4, "delivered": 3, "spilled": 1}
    assert second["problems"] == ["1 spilled: replay them"]
    assert summary["after_last_invocation"] == {
        "accepted": 0, "delivered": 1, "dead_lettered": 0, "spilled": 1, "spooled": 0,
        "restored": 0, "recovered": 0}
    assert summary["checks"] == []


def test_records_a_crashed_environment_left_count_once_where_they_began() -> None:
    # The first environment died with 3 records unsettled (no shutdown.summary); the next
    # one recovered them from the journal and delivered them.
    lines = [f"START RequestId: {REQ1} Version: $LATEST",
             _outcomes({REQ1: {"accepted": 3}}), _emf(RecordsAccepted=3),
             _outcomes({REQ1: {"recovered": 3, "delivered": 3}}, "shutdown"),
             _emf(RecordsRestored=3, RecordsDelivered=3),
             _relay("shutdown.summary", accepted=0, restored=3, delivered=3)]
    parser = _parsed(lines)
    (row,) = parser.invocations
    assert (row.pending, row.problems()) == (
        0, ["3 recovered from a crashed environment's journal"])
    # The crashed environment wrote no shutdown.summary: the check says so.
    assert parser.checks() == ["accepted: rows 3 != shutdown.summary 0"]


def test_rows_that_disagree_with_emf_or_the_shutdown_summary_fail_the_check() -> None:
    parser = _parsed([*SANDBOX, _emf(RecordsDelivered=1)])
    assert parser.checks() == ["delivered: rows 12 != EMF 13"]
    parser = _parsed([line for line in SANDBOX if "RecordsSpilled" not in line])
    assert parser.checks() == ["delivered: rows 12 != EMF 11", "spilled: rows 1 != EMF 0"]


def test_shown_events_are_warnings_errors_and_summaries_not_info_emf_or_handler_lines() -> None:
    summary = summarise(_parsed(SANDBOX), View())
    assert [e["event"] for e in summary["events"]] == [
        "dead_letter.routed", "flush.incomplete", "spill.log", "shutdown.summary"]
    dead_letter = summary["events"][0]
    assert dead_letter["request_id"] == REQ1
    assert dead_letter["fields"] == {"id": "env1-00000003", "topic": "rss.events",
                                     "error": "TOPIC_EXCEPTION: bad"}
    assert dead_letter["ts_ms"] == 1767225600500
    assert _parsed(SANDBOX).emf_lines == 3


def test_level_and_request_id_select_events_and_rows() -> None:
    parser = _parsed(SANDBOX)
    info = summarise(parser, View(level="INFO"))
    assert info["events"][0]["event"] == "init.ready"
    one = summarise(parser, View(request_id=REQ2))
    assert [r["request_id"] for r in one["invocations"]] == [REQ2]
    assert [e["event"] for e in one["events"]] == ["flush.incomplete"]
    assert one["totals"]["accepted"] == 14  # totals always cover every line read


def test_repeated_librdkafka_lines_collapse_into_one_broker_unreachable_line() -> None:
    lines = [json.dumps({"ts": 1767225600 + n, "level": "ERROR", "logger": "kafka-relay",
                         "event": "librdkafka", "message": f"Connect to broker failed {n}"})
             for n in range(30)]
    lines.append(json.dumps({"ts": 1767229200, "level": "ERROR", "logger": "kafka-relay",
                             "event": "librdkafka", "message": "again an hour later"}))
    events = [RelayEvent(**e) for e in summarise(_parsed(lines), View())["events"]]
    assert [e.repeats for e in events] == [30, 1]
    assert format_event(events[0]) == (
        "2026-01-01T00:00:00.000Z ERROR   broker unreachable from 2026-01-01T00:00:00.000Z "
        "to 2026-01-01T00:00:29.000Z (30 librdkafka lines; first: Connect to broker failed 0)")


def test_spilled_records_are_listed_by_place_with_the_replay_command() -> None:
    lines = [_relay("spill.s3", "WARNING", destination="s3://b/kafka-relay/f/2026/01/01/a.ndjson",
                    records=3, reason="x"),
             _relay("spill.s3", "WARNING", destination="s3://b/kafka-relay/f/2026/01/01/b.ndjson",
                    records=2, reason="x"),
             _relay("spill.log", "WARNING", records=4, reason="x")]
    summary = summarise(_parsed(lines), View(log_group="/aws/lambda/f"))
    assert summary["spill"]["places"] == {
        "s3://b/kafka-relay/f/2026/01/01/a.ndjson": 3,
        "s3://b/kafka-relay/f/2026/01/01/b.ndjson": 2, "KAFKA_RELAY_SPILL log lines": 4}
    assert summary["spill"]["replay"] == [
        "kafka-relay-replay s3://b/kafka-relay/f/2026/01/01/ --dry-run   # then again without "
        "--dry-run, add --delete to remove what was replayed",
        "kafka-relay-replay --log-group /aws/lambda/f --start 1d"]


def test_init_errors_are_events() -> None:
    parser = _parsed([_relay("init.error", "ERROR", error_type="Extension.ConfigError",
                             error="KAFKA_BOOTSTRAP_SERVERS is not set")])
    (event,) = parser.events
    assert (event.level, event.event, event.fields["error_type"]) == (
        "ERROR", "init.error", "Extension.ConfigError")


def test_feed_returns_an_invocation_when_its_report_arrives() -> None:
    parser = LogParser()
    assert parser.feed(LogLine(f"START RequestId: {REQ1} Version: $LATEST")) == []
    assert parser.feed(LogLine(_outcomes({REQ1: {"accepted": 2}}))) == []
    (row,) = parser.feed(LogLine(_report(REQ1, init=False), timestamp_ms=5))
    assert isinstance(row, Invocation)
    assert (row.request_id, row.counts) == (REQ1, {"accepted": 2})


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env={}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _log_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "sandbox.log"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_json_output_has_rows_events_totals_checks_and_spill_counts(tmp_path: Path) -> None:
    code, out, _ = _run(["--file", str(_log_file(tmp_path, SANDBOX)), "--json"])
    assert code == 0
    summary = json.loads(out)
    assert set(summary) == {"invocations", "after_last_invocation", "events", "totals",
                            "checks", "spill"}
    first = summary["invocations"][0]
    assert first["request_id"] == REQ1
    assert (first["cold_start"], first["init_ms"], first["counts"]["dead_lettered"]) == (
        True, 123.45, 1)
    assert summary["events"][1] == {
        "ts_ms": 1767225600500, "level": "WARNING", "event": "flush.incomplete",
        "request_id": REQ2, "fields": {"remaining": 2, "budget_ms": 500}, "repeats": 1,
        "last_ms": None}
    assert summary["totals"] == {"invocations": 2, "cold_starts": 1, "accepted": 14,
                                 "delivered": 12, "dead_lettered": 1, "spilled": 1,
                                 "spooled": 0, "restored": 0, "recovered": 0, "pending": 0}
    chunks = len(list(spill_lines([_spilled_record()], reason="")))
    assert chunks > 1
    assert (summary["spill"]["lines"], summary["spill"]["records"]) == (chunks, 1)


def test_text_output_shows_flagged_rows_totals_the_check_and_the_next_command(
    tmp_path: Path,
) -> None:
    code, out, _ = _run(["--file", str(_log_file(tmp_path, SANDBOX))])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["REQUEST", "ID", "DURATION"]
    assert lines[1].split()[:10] == ["!", REQ1, "12.34", "ms", "13", "ms", "123.5", "ms",
                                     "80/256", "10"]
    assert lines[1].endswith("1 on the DLQ")
    assert lines[2].split()[6] == "-"  # warm start: no init duration
    assert lines[3].split()[:6] == ["(after", "the", "last", "invocation,", "SHUTDOWN)", "0"]
    assert lines[4].split()[:7] == ["TOTAL", "14", "12", "1", "1", "0", "0"]
    assert "dead_letter.routed request_id=" + REQ1 in out
    assert "shutdown.summary reason=spindown" in out
    assert "2 invocations (1 cold)" in out
    assert "check: the rows add up to the EMF sums and shutdown.summary" in out
    assert out.endswith("replay them with:\n  kafka-relay-logs ... --spilled-out spilled.log, "
                        "then kafka-relay-replay --log-file spilled.log\n")


def test_spilled_lines_are_written_for_the_replay_tool(tmp_path: Path) -> None:
    prefixed = [f"2026-01-01T00:00:0{i}Z {line}" for i, line in enumerate(SANDBOX)]
    spilled = tmp_path / "spilled.log"
    code, out, _ = _run(["--file", str(_log_file(tmp_path, prefixed)),
                         "--spilled-out", str(spilled)])
    lines = len(list(spill_lines([_spilled_record()], reason="")))
    assert code == 0
    assert f"--log-file {spilled}" in out
    assert out.endswith(f"{lines} KAFKA_RELAY_SPILL lines written to {spilled}\n")
    assert len(spilled.read_text(encoding="utf-8").splitlines()) == lines
    (batch,) = read_log_file(spilled)
    (record,) = batch.records
    original = _spilled_record()
    assert (record.id, record.value, record.dlq_error) == (
        original.id, original.value, original.dlq_error)



def test_a_log_without_spills_says_it_wrote_no_spill_lines(tmp_path: Path) -> None:
    spilled = tmp_path / "spilled.log"
    code, out, _ = _run(["--file", str(_log_file(tmp_path, SANDBOX[:3])),
                         "--spilled-out", str(spilled)])
    assert code == 0
    assert out.endswith(f"0 KAFKA_RELAY_SPILL lines written to {spilled}\n")
    assert spilled.read_text(encoding="utf-8") == ""

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
    assert items[1]["counts"]["accepted"] == 10


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


def test_since_and_until_select_a_files_events_by_time(tmp_path: Path) -> None:
    code, out, _ = _run(["--file", str(_log_file(tmp_path, SANDBOX)), "--json",
                         "--since", "1767225601000"])
    assert code == 0
    assert json.loads(out)["events"] == []
