"""Replay reads spilled records back from spool files and log lines, and dry-runs count them."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.kafka_broker import free_port
from kafka_relay.config import Config, load_config
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.codec import spill_lines
from kafka_relay.spill.sinks import SpillChain
from kafka_relay.tools.replayer import (
    Batch,
    ProducerLike,
    ReplayError,
    ReplayReport,
    SourceResult,
    _produce,
    destination,
    main,
    parse_s3_url,
    read_log_lines,
    read_spool,
    replay,
)


def _records(topic: str = "rss.events", count: int = 3) -> list[Record]:
    return [
        Record(id=f"env1-{i:08x}", topic=topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
               headers=(("source", b"feed"),), timestamp_ms=1767225600000 + i,
               request_id="req-1")
        for i in range(count)
    ]


def _dead_letter(record: Record) -> Record:
    record.dlq_error, record.attempts = "TOPIC_AUTHORIZATION_FAILED: denied", 1
    return record


def _spool_spiller(tmp_path: Path) -> SpillChain:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "unused:9092",
                          "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool")})
    clock = iter(range(1767225600000, 1767225700000, 1000))
    return SpillChain.from_config(config, JsonLogger(stream=io.StringIO()),
                                  wall_ms=lambda: next(clock))


def _same(a: Record, b: Record) -> bool:
    return (a.id, a.topic, a.key, a.value, a.headers, a.timestamp_ms, a.dlq_error) == (
        b.id, b.topic, b.key, b.value, b.headers, b.timestamp_ms, b.dlq_error)


def test_a_spool_directory_reads_back_every_spilled_record_oldest_file_first(
    tmp_path: Path,
) -> None:
    spiller = _spool_spiller(tmp_path)
    first, second = _records(count=2), _records("prices", count=1)
    spiller.spill(first, reason="kafka down")
    spiller.spill(second, reason="kafka down")
    (tmp_path / "spool" / "0-half.partial").write_text("{not json", encoding="utf-8")
    batches = list(read_spool(tmp_path / "spool"))
    assert [len(b.records) for b in batches] == [2, 1]
    assert all(_same(a, b) for a, b in zip(batches[0].records + batches[1].records,
                                           first + second, strict=True))
    assert all(b.origin.endswith(".ndjson") and b.delete is not None for b in batches)


def test_a_single_spooled_file_can_be_replayed(tmp_path: Path) -> None:
    _spool_spiller(tmp_path).spill(_records(), reason="x")
    (file,) = (tmp_path / "spool").glob("*.ndjson")
    (batch,) = read_spool(file)
    assert [r.id for r in batch.records] == [r.id for r in _records()]


def test_a_file_that_is_not_a_spill_names_itself_and_its_lines(tmp_path: Path) -> None:
    (tmp_path / "bad.ndjson").write_text('{"topic": "t"}\n', encoding="utf-8")
    (batch,) = read_spool(tmp_path)
    assert batch.records == []
    (line,) = batch.bad_lines
    assert "bad.ndjson line 1: not a kafka-relay spill record (KeyError" in line


def test_damaged_spool_lines_are_skipped_and_named_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    _spool_spiller(tmp_path).spill(_records(count=3), reason="x")
    (file,) = (tmp_path / "spool").glob("*.ndjson")
    header, *good = file.read_bytes().splitlines()  # own spool files start with a header
    bad_b64 = json.dumps({**json.loads(good[0]), "id": "bad", "value_b64": "!!not base64"})
    file.write_bytes(b"\n".join([header, good[0], b"{cut mid-way", good[1], bad_b64.encode(),
                                  b"\xff\xfe not utf-8", good[2]]) + b"\n")
    (batch,) = read_spool(file)
    assert [r.id for r in batch.records] == [r.id for r in _records(count=3)]
    assert [line.split(":")[0] for line in batch.bad_lines] == [
        f"{file} line 3", f"{file} line 5", f"{file} line 6"]


def test_a_malformed_spill_log_line_is_skipped_and_the_others_are_read() -> None:
    records = _records(count=2)
    malformed = '{"event":"KAFKA_RELAY_SPILL","records":[{"topic":"t"}]}'
    lines = [*spill_lines(records[:1], reason="x"), malformed,
             *spill_lines(records[1:], reason="x")]
    batch = read_log_lines(lines, origin="exported.log")
    assert [r.id for r in batch.records] == [r.id for r in records]
    (bad,) = batch.bad_lines
    assert bad.startswith("exported.log line 2: a malformed KAFKA_RELAY_SPILL line")


def test_a_missing_spool_directory_is_an_error_up_front(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="no spool directory"):
        read_spool(tmp_path / "absent")


def test_log_lines_give_back_chunked_spills_among_noise_and_prefixes() -> None:
    big = Record(id="env1-big", topic="rss.events", key=None, value=bytes(range(256)) * 1_500,
                 headers=(("a", b"\x00\xff"),), timestamp_ms=5)
    small = _dead_letter(_records(count=1)[0])
    big_lines = list(spill_lines([big], reason="shutdown"))
    assert len(big_lines) > 1
    lines = [
        "START RequestId: r1 Version: $LATEST",
        f"2026-01-01T00:00:00.000Z\t{big_lines[1]}",
        '{"ts":1,"level":"WARNING","logger":"kafka-relay","event":"spill.log","records":2}',
        "a handler line mentioning KAFKA_RELAY_SPILL {but not json",
        *(f"2026/01/01/[$LATEST]abc {line}" for line in spill_lines([small], reason="shutdown")),
        big_lines[0],
        *big_lines[2:],
        "END RequestId: r1",
    ]
    batch = read_log_lines(lines, origin="test")
    assert batch.incomplete == ()
    assert batch.delete is None
    by_id = {r.id: r for r in batch.records}
    assert _same(by_id["env1-big"], big)
    assert _same(by_id[small.id], small)


def test_a_chunked_spill_with_a_missing_chunk_is_reported_incomplete() -> None:
    big = Record(id="env1-big", topic="t", key=None, value=b"x" * 400_000)
    lines = list(spill_lines([big], reason="shutdown"))
    batch = read_log_lines(lines[:-1] + list(spill_lines([_records()[0]], reason="r")),
                           origin="test")
    assert [r.id for r in batch.records] == [_records()[0].id]
    assert batch.incomplete == ("env1-big",)


def test_records_bound_for_the_dlq_go_there_with_the_relay_headers() -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    plain, failed = _records(count=2)
    _dead_letter(failed)
    assert destination(plain, config) == ("rss.events", [("source", b"feed"),
                                                          ("x-relay-id", plain.id.encode())])
    topic, headers = destination(failed, config)
    assert topic == "dlq.rss.events"
    assert dict(headers)["x-relay-original-topic"] == b"rss.events"
    assert dict(headers)["x-relay-error"] == b"TOPIC_AUTHORIZATION_FAILED: denied"
    assert dict(headers)["x-relay-id"] == failed.id.encode()
    assert destination(failed, config, to_original=True)[0] == "rss.events"
    custom = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_DLQ_TOPIC": "all.dlq"})
    assert destination(failed, custom)[0] == "all.dlq"


def test_the_spill_record_names_its_dlq_and_when_it_was_accepted(tmp_path: Path) -> None:
    record = _dead_letter(_records(count=1)[0])
    record.dlq_topic, record.accepted_ms, record.error_kind = "team.dlq", 1767225600123, \
        "permanent"
    _spool_spiller(tmp_path).spill([record], reason="x")
    ((back,),) = [batch.records for batch in read_spool(tmp_path / "spool")]
    operator = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_DLQ_TOPIC": "other"})

    assert (back.dlq_topic, back.accepted_ms, back.error_kind) == (
        "team.dlq", 1767225600123, "permanent")
    assert destination(back, operator)[0] == "team.dlq"  # not the operator's shell's DLQ


def test_transient_failures_can_go_home_while_permanent_ones_stay_dlq_bound() -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    transient, permanent = _records(count=2)
    transient.dlq_error = "gave up after 3 attempts: _MSG_TIMED_OUT: Local: timed out"
    _dead_letter(permanent)
    assert destination(transient, config, transient_to_original=True)[0] == "rss.events"
    assert destination(permanent, config, transient_to_original=True)[0] == "dlq.rss.events"
    assert destination(transient, config)[0] == "dlq.rss.events"


def test_a_replayed_record_keeps_its_time_the_clients_or_when_it_was_accepted() -> None:
    stamped, unstamped = _records(count=2)
    stamped.timestamp_ms, unstamped.timestamp_ms = 1767225600000, None
    unstamped.accepted_ms = 1767225600777
    sent: list[int] = []

    class Recording:
        def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
            sent.append(kwargs["timestamp"])
            kwargs["on_delivery"](None, None)

        def poll(self, timeout: float = 0) -> int:
            return 0

        def flush(self, timeout: float = 0) -> int:
            return 0

    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    report = replay([Batch("test", [stamped, unstamped])], config=config, producer=Recording())
    assert (report.produced, sent) == (2, [1767225600000, 1767225600777])


def test_a_dry_run_counts_by_destination_topic_and_produces_nothing(tmp_path: Path) -> None:
    spiller = _spool_spiller(tmp_path)
    records = _records(count=3) + _records("prices", count=1)
    _dead_letter(records[0])
    spiller.spill(records, reason="x")

    def no_producer(_config: Config, _timeout: float) -> ProducerLike:
        raise AssertionError("a dry run must not build a producer")

    out, err = io.StringIO(), io.StringIO()
    code = main([str(tmp_path / "spool"), "--dry-run"], env={}, stdout=out, stderr=err,
                producer_factory=no_producer)
    assert (code, err.getvalue()) == (0, "")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("read 4 records from 1 source(s)")
    assert lines[1:7] == [
        "  dlq.rss.events: 1", "         1  permanent: TOPIC_AUTHORIZATION_FAILED",
        "  prices: 1", "         1  not delivered in time (outage or shutdown)",
        "  rss.events: 2", "         2  not delivered in time (outage or shutdown)"]
    assert "dry run: nothing produced" in lines
    assert len(list((tmp_path / "spool").glob("*.ndjson"))) == 1


def test_a_dry_run_report_counts_incomplete_spills_as_not_ok() -> None:
    big = Record(id="env1-big", topic="t", key=None, value=b"x" * 400_000)
    batch = read_log_lines(list(spill_lines([big], reason="r"))[1:], origin="test")
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    report = replay([batch], config=config, producer=None)
    assert (report.read, report.incomplete, report.ok) == (0, ["env1-big"], False)


def test_dry_run_from_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "export.log"
    lines = [json.dumps({"message": "noise"}),
             *(line for r in _records(count=2) for line in spill_lines([r], reason="r"))]
    log.write_text("\n".join(lines), encoding="utf-8")
    out = io.StringIO()
    code = main(["--log-file", str(log), "--dry-run"], env={}, stdout=out, stderr=io.StringIO())
    assert code == 0
    assert "  rss.events: 2" in out.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["s3://bucket/prefix", "--log-file", "x.log"],
        ["--log-file", "x.log", "--delete"],
        ["/tmp/spool", "--dry-run", "--delete"],
        ["/tmp/spool", "--start", "1h"],
    ],
)
def test_bad_combinations_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv, env={}, stdout=io.StringIO(), stderr=io.StringIO())
    assert exit_info.value.code == 2


def test_a_log_file_given_as_the_source_points_to_log_file(tmp_path: Path) -> None:
    log = tmp_path / "sandbox.log"
    log.write_text("START RequestId: x\n", encoding="utf-8")
    err = io.StringIO()
    code = main([str(log), "--dry-run"], env={}, stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert "use --log-file" in err.getvalue()


def test_without_a_bootstrap_a_real_replay_names_the_option_and_the_variable(
        tmp_path: Path) -> None:
    err = io.StringIO()
    code = main([str(tmp_path)], env={}, stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert err.getvalue() == ("error: no brokers: pass --bootstrap HOST:PORT, or set "
                              "KAFKA_BOOTSTRAP_SERVERS as on the function\n")


def test_without_a_bootstrap_a_redrive_names_the_option_and_the_variable() -> None:
    err = io.StringIO()
    code = main(["--from-topic", "dlq.orders"], env={"KAFKA_BOOTSTRAP_SERVERS": " "},
                stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert "pass --bootstrap HOST:PORT" in err.getvalue()


def test_s3_urls_split_into_bucket_and_prefix() -> None:
    assert parse_s3_url("s3://spills/kafka-relay/fn/") == ("spills", "kafka-relay/fn/")
    assert parse_s3_url("s3://spills") == ("spills", "")
    with pytest.raises(ReplayError, match="s3://bucket/prefix"):
        parse_s3_url("s3:///prefix")


_NAMES = st.one_of(st.text(max_size=8), st.sampled_from(["\ud800", "a\udfff", "ok"]))


@settings(max_examples=200, deadline=None)
@given(header_name=_NAMES, topic=_NAMES.filter(bool),
       timestamp=st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70)))
def test_replay_queues_or_reports_any_record_and_never_crashes_the_producer(
    kafka_producer_offline: Producer, header_name: str, topic: str, timestamp: int | None
) -> None:
    record = Record(id="env1-1", topic=topic, key=b"k", value=b"v",
                    headers=((header_name, b"v"),), timestamp_ms=timestamp)
    report = ReplayReport()
    taken: list[str] = []

    class Recording:  # the real producer, noting each produce() that returned normally
        def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
            kafka_producer_offline.produce(topic, *args, **kwargs)
            taken.append(topic)

        def poll(self, timeout: float = 0) -> int:
            return kafka_producer_offline.poll(timeout)

        def flush(self, timeout: float = 0) -> int:
            return kafka_producer_offline.flush(timeout)

    _produce(Recording(), record, topic, record.kafka_headers(), report,
             source=SourceResult("test", 1), limit=1_000_000,
             on_delivery=lambda _err, _msg: None)
    # each record is either queued or skipped with a reason; nothing raises, nothing crashes
    assert (len(taken), report.failed) in ((1, 0), (0, 1)), report
    if report.failed:
        assert report.failures[0].startswith("env1-1 → ")


@pytest.fixture(scope="module")
def kafka_producer_offline() -> Iterator[Producer]:
    """A real producer that never reaches a broker: produce() only queues."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}",
                         "log_level": 0})
    yield producer
    producer.purge()
