"""Spilled records replayed into the real broker come back byte for byte with their ids."""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import pytest

from devtools.kafka_broker import ConsumedRecord, free_port
from devtools.moto_server import MotoServer, use_moto
from kafka_relay.config import Config, load_config
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillChain, SpillKind
from kafka_relay.tools.replayer import main
from tests.conftest import Broker


def _records(topic: str, count: int, *, prefix: str = "env1") -> list[Record]:
    return [
        Record(id=f"{prefix}-{i:08x}", topic=topic, key=f"k{i}".encode(),
               value=bytes([i]) * (i + 1) + b"\xff", headers=(("source", b"\x00feed"),),
               timestamp_ms=1767225600000 + i, request_id=f"req-{i}")
        for i in range(count)
    ]


def _config(broker: Broker, tmp_path: Path, **env: str) -> Config:
    return load_config({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                        "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool"), **env})


def _replay(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env=env or {}, stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


def _assert_same(got: list[ConsumedRecord], sent: list[Record]) -> None:
    by_id = {r.headers["x-relay-id"].decode(): r for r in got}
    assert sorted(by_id) == sorted(r.id for r in sent)
    for record in sent:
        back = by_id[record.id]
        assert (back.key, back.value, back.timestamp_ms) == (
            record.key, record.value, record.timestamp_ms)
        assert back.headers == {"source": b"\x00feed", "x-relay-id": record.id.encode()}


@pytest.fixture
def spool(broker: Broker, tmp_path: Path, topic: str) -> tuple[Path, list[Record]]:
    records = _records(topic, 5)
    spiller = SpillChain.from_config(_config(broker, tmp_path), JsonLogger(stream=io.StringIO()))
    spiller.spill(records[:3], reason="kafka unreachable")
    spiller.spill(records[3:], reason="kafka unreachable")
    return tmp_path / "spool", records


def test_a_spool_directory_replays_to_the_original_topic_with_original_ids(
    broker: Broker, topic: str, spool: tuple[Path, list[Record]]
) -> None:
    directory, records = spool
    code, out = _replay([str(directory)], {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap})
    assert code == 0, out
    assert f"read 5 records from 2 source(s) at {directory}" in out
    assert "produced 5, failed 0" in out
    _assert_same(broker.read(topic, expected=5), records)
    assert len(list(directory.glob("*.ndjson"))) == 2  # kept without --delete


def test_replaying_twice_with_the_state_file_produces_each_record_once(
    broker: Broker, topic: str, spool: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    directory, records = spool
    home = {"HOME": str(tmp_path / "home")}  # the default state file lives under $HOME
    first = _replay([str(directory), "--bootstrap", broker.bootstrap], home)
    second = _replay([str(directory), "--bootstrap", broker.bootstrap], home)
    assert (first[0], second[0]) == (0, 0)
    assert "produced 5, failed 0" in first[1]
    assert "skipped 5 replayed before" in second[1]
    assert "produced 0, failed 0" in second[1]
    _assert_same(broker.read(topic, expected=5), records)
    ids = (tmp_path / "home" / ".kafka-relay" / "replayed-ids").read_text().split()
    assert sorted(ids) == sorted(r.id for r in records)


def test_no_state_replays_again_and_the_copies_dedupe_by_relay_id(
    broker: Broker, topic: str, spool: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    directory, records = spool
    state = tmp_path / "ids"
    for _ in range(2):
        assert _replay([str(directory), "--bootstrap", broker.bootstrap, "--state",
                        str(state)])[0] == 0
    assert _replay([str(directory), "--bootstrap", broker.bootstrap, "--no-state"])[0] == 0
    got = broker.read(topic, expected=10)
    ids = [r.headers["x-relay-id"].decode() for r in got]
    assert sorted(set(ids)) == sorted(r.id for r in records)
    assert all(ids.count(record_id) == 2 for record_id in set(ids))


def test_delete_keeps_only_the_source_with_an_oversize_record_and_says_why(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    records = _records(topic, 4)
    big = Record(id="env1-big", topic=topic, key=b"k", value=b"x" * 5_000)
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_PRODUCER_MESSAGE_MAX_BYTES": "2000"}
    spiller = SpillChain.from_config(_config(broker, tmp_path), JsonLogger(stream=io.StringIO()))
    spiller.spill(records[:2], reason="kafka unreachable")
    spiller.spill([records[2], big, records[3]], reason="kafka unreachable")
    directory = tmp_path / "spool"
    first, second = sorted(directory.glob("*.ndjson"))

    dry_code, dry = _replay([str(directory), "--dry-run"], env)
    code, out = _replay([str(directory), "--delete"], env)

    assert dry_code == 0
    assert f"will fail: env1-big → {topic}: 5" in dry
    assert "over the producer's message.max.bytes=2000: raise KAFKA_PRODUCER_MESSAGE_MAX_BYTES" \
        in dry
    assert code == 1
    assert "produced 4, failed 1" in out
    assert "env1-big" in out
    assert "KAFKA_PRODUCER_MESSAGE_MAX_BYTES" in out
    assert f"deleted {first}" in out
    assert f"kept {second}: 1 of its records were not produced" in out
    assert sorted(directory.glob("*.ndjson")) == [second]
    assert len(broker.read(topic, expected=4)) == 4


def test_delete_removes_the_spool_files_after_a_full_replay(
    broker: Broker, topic: str, spool: tuple[Path, list[Record]]
) -> None:
    directory, _ = spool
    code, out = _replay([str(directory), "--bootstrap", broker.bootstrap, "--delete"])
    assert code == 0, out
    assert out.count("deleted ") == 2
    assert list(directory.glob("*.ndjson")) == []
    assert len(broker.read(topic, expected=5)) == 5


def test_a_replay_that_cannot_reach_kafka_fails_and_keeps_the_files(
    spool: tuple[Path, list[Record]],
) -> None:
    directory, _ = spool
    code, out = _replay([str(directory), "--bootstrap", f"127.0.0.1:{free_port()}",
                         "--timeout", "1", "--delete"])
    assert code == 1
    assert "produced 0, failed 5" in out
    assert "_MSG_TIMED_OUT" in out
    assert len(list(directory.glob("*.ndjson"))) == 2


def test_dry_run_produces_nothing(
    broker: Broker, topic: str, spool: tuple[Path, list[Record]]
) -> None:
    directory, _ = spool
    code, out = _replay([str(directory), "--dry-run", "--bootstrap", broker.bootstrap])
    assert code == 0
    assert f"  {topic}: 5" in out
    assert broker.read(topic, timeout=2) == []


def test_log_line_spills_replay_and_dlq_bound_records_reach_the_dlq(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    dlq = broker.create_topic(f"dlq.{topic}")
    records = _records(topic, 3)
    failed = _records(topic, 1, prefix="env2")[0]
    failed.dlq_error, failed.attempts = "TOPIC_AUTHORIZATION_FAILED: denied", 2
    log = io.StringIO()
    spiller = SpillChain.from_config(_config(broker, tmp_path), JsonLogger(stream=log))
    spiller.final = True  # at SHUTDOWN the spool would die with the environment: log lines
    spilled = spiller.spill([*records, failed], reason="shutdown (spindown) before delivery")
    assert spilled.kind is SpillKind.LOG
    exported = tmp_path / "sandbox.log"
    exported.write_text(
        "START RequestId: r1 Version: $LATEST\n"
        + "".join(f"2026-01-01T00:00:00.000Z\tr1\t{line}\n" for line in log.getvalue().split("\n"))
        + "END RequestId: r1\n",
        encoding="utf-8",
    )
    code, out = _replay(["--log-file", str(exported), "--bootstrap", broker.bootstrap])
    assert code == 0, out
    assert f"  {dlq}: 1" in out
    _assert_same(broker.read(topic, expected=3), records)
    (dead,) = broker.read(dlq, expected=1)
    assert (dead.key, dead.value) == (failed.key, failed.value)
    assert dead.headers["x-relay-id"] == failed.id.encode()
    assert dead.headers["x-relay-error"] == b"TOPIC_AUTHORIZATION_FAILED: denied"
    assert dead.headers["x-relay-original-topic"] == topic.encode()
    assert dead.headers["x-relay-attempts"] == b"2"
    assert dead.headers["x-relay-request-id"] == b"req-0"



def test_s3_spills_replay_from_a_prefix_and_delete_removes_only_spill_objects(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, broker: Broker, topic: str,
    tmp_path: Path,
) -> None:
    use_moto(moto, monkeypatch)  # the spill chain's and the CLI's boto3 clients both reach moto
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="relay-spill")
    config = _config(broker, tmp_path, KAFKA_RELAY_SPILL_BUCKET="relay-spill",
                     AWS_LAMBDA_FUNCTION_NAME="rss-producer")
    spiller = SpillChain.from_config(config, JsonLogger(stream=io.StringIO()))
    records = _records(topic, 4)
    destinations = [spiller.spill(records[:2], reason="kafka unreachable").location,
                    spiller.spill(records[2:], reason="kafka unreachable").location]
    assert all(d.startswith("s3://relay-spill/kafka-relay/rss-producer/") for d in destinations)
    s3.put_object(Bucket="relay-spill", Key="kafka-relay/rss-producer/NOTES.txt", Body=b"keep")

    code, out = _replay(["s3://relay-spill/kafka-relay/rss-producer/", "--delete"],
                        {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap})
    assert code == 0, out
    assert "produced 4, failed 0" in out
    assert all(f"deleted {d}" in out for d in destinations)
    _assert_same(broker.read(topic, expected=4), records)
    left = s3.list_objects_v2(Bucket="relay-spill")["Contents"]
    assert [o["Key"] for o in left] == ["kafka-relay/rss-producer/NOTES.txt"]


def test_an_unreadable_bucket_stops_the_replay_with_a_hint(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, broker: Broker
) -> None:
    use_moto(moto, monkeypatch)
    code, out = _replay(["s3://no-such-bucket/x", "--bootstrap", broker.bootstrap])
    assert code == 1
    assert "reading stopped: reading s3://no-such-bucket/x failed" in out
    assert "s3:ListBucket" in out


def test_bad_lines_and_unproducible_records_are_skipped_named_and_the_rest_restored(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    good = _records(topic, 3)
    huge_time = _records(topic, 1, prefix="huge")[0]
    huge_time.timestamp_ms = 2**63
    surrogate = _records(topic, 1, prefix="surrogate")[0]
    surrogate.headers = (("\ud800", b"v"),)  # crashes confluent-kafka inside produce()
    spiller = SpillChain.from_config(_config(broker, tmp_path), JsonLogger(stream=io.StringIO()))
    spiller.spill([good[0], huge_time, good[1], surrogate, good[2]], reason="kafka unreachable")
    (file,) = (tmp_path / "spool").glob("*.ndjson")
    lines = file.read_text(encoding="utf-8").splitlines()
    lines.insert(1, "{not json")
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    code, out = _replay([str(tmp_path / "spool"), "--bootstrap", broker.bootstrap, "--delete"])
    assert code == 1, out
    assert f"skipped: {file} line 2: not a kafka-relay spill record" in out
    assert "huge-00000000 → " + topic + ": skipped, timestamp_ms" in out
    assert "surrogate-00000000 → " + topic + ": skipped, the topic or a header name" in out
    assert "produced 3, failed 2" in out
    _assert_same(broker.read(topic, expected=3), good)
    assert file.exists()  # not deleted: it still holds what could not be replayed
