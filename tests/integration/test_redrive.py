"""Redriving a dead-letter topic on the real broker: back to the original topic, once."""

from __future__ import annotations

import io
import socket
import time

import pytest
from confluent_kafka import Producer

from kafka_relay.record import Record
from kafka_relay.tools.replayer import main
from tests.conftest import Broker

DLQ_HEADERS = {"x-relay-error", "x-relay-error-kind", "x-relay-original-topic",
               "x-relay-attempts", "x-relay-request-id", "x-relay-first-failed-ms",
               "x-relay-function", "x-relay-spilled-to"}


def _dead(topic: str, name: str, *, kind: str, error: str, failed_ms: int) -> Record:
    record = Record(id=f"env1-{name}", topic=topic, key=name.encode(),
                    value=f"value {name}".encode(), headers=(("source", b"feed"),),
                    timestamp_ms=1767225600000, request_id="req-1")
    record.dlq_error, record.error_kind = error, kind
    record.attempts = record.dlq_attempts = 3
    record.first_failed_ms = failed_ms
    return record


@pytest.fixture
def dlq(broker: Broker, topic: str) -> tuple[str, list[Record]]:
    """A DLQ with three transient and two permanent dead letters, a DLQ pointer of an
    oversize record and a record that is not kafka-relay's."""
    dlq = broker.create_topic(f"dlq.{topic}")
    transient = [_dead(topic, f"t{n}", kind="transient", failed_ms=1767225601000 + n,
                       error="gave up after 3 attempts: _MSG_TIMED_OUT: Local: timed out")
                 for n in range(3)]
    permanent = [_dead(topic, f"p{n}", kind="permanent", failed_ms=1767225700000 + n,
                       error="TOPIC_AUTHORIZATION_FAILED: denied") for n in range(2)]
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for record in [*transient, *permanent]:
        headers: list[tuple[str, str | bytes | None]] = [
            *record.kafka_headers(dlq_topic=dlq, function="rss-producer")]
        producer.produce(dlq, key=record.key, value=record.value, timestamp=1767225600000,
                         headers=headers)
    pointer = _dead(topic, "big", kind="permanent", failed_ms=1767225800000,
                    error="MSG_SIZE_TOO_LARGE: too large")
    producer.produce(dlq, value=b'{"spilled_to": "s3://b/k.ndjson"}',
                     headers=[*pointer.kafka_headers(dlq_topic=dlq),
                              ("x-relay-spilled-to", b"s3://b/k.ndjson")])
    producer.produce(dlq, value=b"someone else's")
    assert producer.flush(10) == 0
    return dlq, [*transient, *permanent]


def _redrive(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--from-topic", *args], env={}, stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


def test_a_redrive_sends_each_dead_letter_home_once_without_its_dlq_headers(
    broker: Broker, topic: str, dlq: tuple[str, list[Record]]
) -> None:
    name, records = dlq
    dry_code, dry = _redrive(name, "--bootstrap", broker.bootstrap, "--dry-run")
    first_code, first = _redrive(name, "--bootstrap", broker.bootstrap)
    second_code, second = _redrive(name, "--bootstrap", broker.bootstrap)

    assert dry_code == 0, dry
    assert f"     3  → {topic}  (transient: _MSG_TIMED_OUT)" in dry
    assert f"     2  → {topic}  (permanent: TOPIC_AUTHORIZATION_FAILED)" in dry
    assert "     1  → (stays on the DLQ)  (a pointer: replay its record from s3://b/k.ndjson)" \
        in dry
    assert "dry run: nothing produced, no offsets committed" in dry
    assert first_code == 0, first
    assert "read 7 records" in first
    assert "produced 5, failed 0" in first
    assert f"committed {name}[0] at offset 7" in first
    assert second_code == 0, second
    assert "read 0 records" in second
    assert "produced 0, failed 0" in second
    home = {r.headers["x-relay-id"].decode(): r for r in broker.read(topic, timeout=5)}
    assert sorted(home) == sorted(r.id for r in records)
    for record in records:
        back = home[record.id]
        assert (back.key, back.value, back.timestamp_ms) == (record.key, record.value,
                                                             1767225600000)
        assert back.headers == {"source": b"feed", "x-relay-id": record.id.encode()}
        assert not DLQ_HEADERS & set(back.headers)


def test_filters_pick_records_and_each_filter_keeps_its_own_progress(
    broker: Broker, topic: str, dlq: tuple[str, list[Record]]
) -> None:
    name, _ = dlq
    transient = _redrive(name, "--bootstrap", broker.bootstrap, "--error-kind", "transient")
    again = _redrive(name, "--bootstrap", broker.bootstrap, "--error-kind", "transient")
    by_id = _redrive(name, "--bootstrap", broker.bootstrap, "--id", "env1-p1")
    by_pattern = _redrive(name, "--bootstrap", broker.bootstrap, "--match", "AUTHORIZATION",
                          "--since", "1767225700001")

    assert "produced 3, failed 0" in transient[1]
    assert "produced 0, failed 0" in again[1]
    assert "produced 1, failed 0" in by_id[1]
    assert "produced 1, failed 0" in by_pattern[1]  # p0 failed before --since
    got = sorted(r.headers["x-relay-id"].decode() for r in broker.read(topic, timeout=5))
    assert got == ["env1-p1", "env1-p1", "env1-t0", "env1-t1", "env1-t2"]


def test_the_rate_paces_the_produces(
    broker: Broker, topic: str, dlq: tuple[str, list[Record]]
) -> None:
    name, _ = dlq
    started = time.monotonic()
    code, out = _redrive(name, "--bootstrap", broker.bootstrap, "--rate", "10")
    assert code == 0, out
    assert "produced 5, failed 0" in out
    assert time.monotonic() - started >= 0.4  # five produces, 0.1 s apart


def test_redrive_options_without_from_topic_are_refused() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["/tmp/spool", "--error-kind", "transient"], env={}, stdout=io.StringIO(),
             stderr=io.StringIO())
    assert exit_info.value.code == 2


def test_a_redrive_from_brokers_that_refuse_connections_is_one_error_naming_the_fix() -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
        code, out = _redrive("dlq.orders", "--bootstrap", bootstrap, "--dry-run")
    assert code == 2
    assert out == ("error: cannot read 'dlq.orders': _TRANSPORT: Failed to get metadata: Local: "
                   "Broker transport failure; check --bootstrap (or KAFKA_BOOTSTRAP_SERVERS) "
                   "and the KAFKA_AUTH settings\n")
