"""The delivery engine on a scripted fake producer and a fake clock: every failure path settles
each record exactly once, and the ledger's invariant holds after every step."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from kafka_relay.config import load_config
from kafka_relay.delivery import pump as pump_module
from kafka_relay.delivery.ledger import BufferFull, Limits
from kafka_relay.delivery.queue import in_flight_window
from kafka_relay.producer.factory import linger_s
from kafka_relay.protocol import BrokerState
from kafka_relay.record import Record
from kafka_relay.spill.codec import parse_spill_lines
from tests.unit.engine_fakes import FakeProducer, Rig, Sent, error_for


def test_accepted_records_are_delivered_and_accounted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.accept(rig.records(3))
    rig.assert_accounted()
    rig.step()
    rig.assert_accounted()
    assert rig.counts()["delivered"] == 3
    assert [m.relay_id for m in rig.producer.sent] == ["r1", "r2", "r3"]
    assert rig.engine.gauge().broker_state is BrokerState.UP


def test_in_flight_is_counted_from_dequeue_until_the_report(tmp_path: Path) -> None:
    rig = Rig(tmp_path, producer=lambda: FakeProducer(hold=True))
    rig.engine.accept(rig.records(4))
    rig.step()
    assert rig.engine.status()["in_flight"] == 4
    assert rig.engine.gauge().pending == 4
    rig.assert_accounted()
    rig.producer.hold = False
    rig.step()
    assert rig.engine.status()["in_flight"] == 0
    assert rig.counts()["delivered"] == 4
    rig.assert_accounted()


def test_a_full_local_queue_gives_records_back_in_order_and_sends_them_later(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, producer=lambda: FakeProducer(capacity=2, hold=True))
    rig.engine.accept(rig.records(5))
    rig.step()  # BufferError after 2: the other 3 go back to the front of the queue
    assert [m.relay_id for m in rig.producer.sent] == ["r1", "r2"]
    assert rig.engine.status()["in_flight"] == 2
    rig.assert_accounted()
    rig.producer.hold = False
    rig.step(4)
    assert [m.relay_id for m in rig.producer.sent] == ["r1", "r2", "r3", "r4", "r5"]
    assert rig.counts()["delivered"] == 5
    rig.assert_accounted()


def test_a_transient_error_retries_with_backoff_then_dead_letters_with_headers(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, max_attempts=3, retry_backoff_ms=500)
    rig.producer.respond = error_for("t", KafkaError._MSG_TIMED_OUT)
    rig.engine.accept(rig.records(1))
    rig.step()  # attempt 1 fails: due again in 500 ms
    assert rig.engine.gauge().broker_state is BrokerState.DEGRADED
    assert rig.engine.status()["waiting_retry"] == 1
    rig.step()
    assert len(rig.producer.sent) == 1, "not before its backoff"
    rig.assert_accounted()
    rig.clock.advance(500)
    rig.step()  # attempt 2 fails: 1000 ms
    rig.clock.advance(999)
    rig.step()
    assert len(rig.producer.sent) == 2
    rig.clock.advance(1)
    rig.step()  # attempt 3 fails: gave up, to the DLQ now
    rig.step()
    rig.assert_accounted()
    dlq = rig.producer.sent[-1]
    assert dlq.topic == "dlq.t"
    assert rig.counts()["dead_lettered"] == 1
    assert rig.counts()["retries"] == 3
    assert dlq.headers["x-relay-error"].startswith(b"gave up after 3 attempts: _MSG_TIMED_OUT")
    assert dlq.headers["x-relay-original-topic"] == b"t"
    assert dlq.headers["x-relay-attempts"] == b"3"
    assert dlq.headers["x-relay-request-id"] == b"req-1"
    assert int(dlq.headers["x-relay-first-failed-ms"]) == rig.clock.now_ms - 1500


def test_dlq_retries_leave_the_attempts_header_agreeing_with_the_error_and_name_the_kind(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, max_attempts=2, retry_backoff_ms=100, function_name="rss-producer")
    dlq_failures = iter([KafkaError(KafkaError._MSG_TIMED_OUT)])
    rig.producer.respond = lambda sent: (
        KafkaError(KafkaError._MSG_TIMED_OUT) if sent.topic == "t" else next(dlq_failures, None))
    rig.engine.accept(rig.records(1))
    for _ in range(8):
        rig.step()
        rig.clock.advance(60_000)
    rig.assert_accounted()
    assert rig.counts()["dead_lettered"] == 1
    dlq = [m for m in rig.producer.sent if m.topic == "dlq.t"]
    assert len(dlq) == 2  # the first DLQ attempt timed out (attempt 3), the second took it
    for message in dlq:
        assert message.headers["x-relay-error"].startswith(b"gave up after 2 attempts: ")
        assert message.headers["x-relay-attempts"] == b"2"
        assert message.headers["x-relay-error-kind"] == b"transient"
        assert message.headers["x-relay-function"] == b"rss-producer"
    (routed,) = rig.events("dead_letter.routed")
    assert (routed["error_kind"], routed["attempts"], routed["dlq_topic"]) == (
        "transient", 2, "dlq.t")
    (outcome,) = [e for e in rig.events("record.outcome") if e["id"] == "r1"]
    assert (outcome["outcome"], outcome["where"]) == ("dead_lettered", "dlq.t")


def test_a_permanent_error_is_dead_lettered_as_permanent(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.producer.respond = error_for("t", KafkaError.TOPIC_AUTHORIZATION_FAILED)
    rig.engine.accept(rig.records(1))
    rig.step(2)
    (dlq,) = [m for m in rig.producer.sent if m.topic == "dlq.t"]
    assert (dlq.headers["x-relay-error-kind"], dlq.headers["x-relay-attempts"]) == (
        b"permanent", b"1")


def test_records_waiting_out_a_backoff_go_at_once_when_the_broker_is_back(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, retry_backoff_ms=10_000)
    failing = {"r1"}
    rig.producer.respond = lambda sent: (
        KafkaError(KafkaError._TRANSPORT) if sent.relay_id in failing else None)
    rig.engine.accept(rig.records(1))
    rig.step()
    assert rig.engine.status()["waiting_retry"] == 1
    failing.clear()
    rig.engine.accept(rig.records(1, key=b"other"))  # r1's key's would wait behind r1
    rig.step()  # r2 delivered: the broker is up, r1 is released from its backoff
    rig.step()
    assert rig.counts()["delivered"] == 2
    assert rig.engine.status()["waiting_retry"] == 0
    rig.assert_accounted()


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                  KafkaError._UNKNOWN_TOPIC, KafkaError.INVALID_RECORD])
def test_a_permanent_error_dead_letters_at_once(tmp_path: Path, code: int) -> None:
    rig = Rig(tmp_path)
    rig.producer.respond = error_for("t", code)
    rig.engine.accept(rig.records(2))
    rig.step()
    rig.assert_accounted()
    rig.step()
    assert rig.counts()["dead_lettered"] == 2
    assert [m.topic for m in rig.producer.sent] == ["t", "t", "dlq.t", "dlq.t"]
    assert rig.producer.sent[-1].headers["x-relay-error"].startswith(
        KafkaError(code).name().encode())
    assert len(rig.events("dead_letter.routed")) == 2
    rig.assert_accounted()


def test_a_purged_record_is_requeued_without_spending_an_attempt(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    answers = iter([KafkaError(KafkaError._PURGE_QUEUE)])
    rig.producer.respond = lambda _s: next(answers, None)
    (record,) = rig.records(1)
    rig.engine.accept([record])
    rig.step()
    rig.assert_accounted()
    rig.step()
    assert rig.counts()["delivered"] == 1
    assert (record.attempts, rig.counts()["retries"]) == (0, 0)
    rig.assert_accounted()


def test_a_fenced_producer_is_rebuilt_and_its_records_resent(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = rig.producer
    first.respond = error_for("t", KafkaError.PRODUCER_FENCED)
    rig.engine.accept(rig.records(3))
    rig.step()  # fenced: a rebuild is due, the records queued again
    rig.assert_accounted()
    rig.step()
    assert len(rig.producers) == 2
    assert rig.engine.pump.producer is rig.producers[1]
    assert rig.counts()["producers_built"] == 2
    assert rig.counts()["delivered"] == 3
    assert [m.relay_id for m in rig.producers[1].sent] == ["r1", "r2", "r3"]
    assert rig.events("producer.rebuild")
    rig.assert_accounted()


def test_a_fatal_client_error_rebuilds_and_resends_what_the_old_producer_held(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, producer=lambda: FakeProducer(hold=True))
    rig.engine.accept(rig.records(2))
    rig.step()
    rig.engine.on_client_error(KafkaError(KafkaError._FATAL, fatal=True))
    rig.producers[0].hold = True
    rig.step()  # purge: the old producer's records come back, a new producer is built
    assert rig.producers[0].purged == 2
    rig.producer.hold = False
    rig.step(2)
    assert rig.counts()["delivered"] == 2
    assert [m.relay_id for m in rig.producer.sent] == ["r1", "r2"]
    rig.assert_accounted()


def test_an_oversize_record_is_spilled_and_a_pointer_dead_lettered(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.producer.respond = error_for(
        "t", KafkaError.MSG_SIZE_TOO_LARGE)
    rig.engine.accept(rig.records(1, value=b"x" * 2_000))
    rig.step(2)
    rig.assert_accounted()
    assert rig.counts()["spilled"] == 1
    assert rig.counts()["spooled"] == 0, "retrying an oversize record cannot help"
    pointer = rig.producer.sent[-1]
    assert pointer.topic == "dlq.t"
    body = json.loads(pointer.value or b"")
    assert (body["id"], body["spilled_to"], body["size"]) == (
        "r1", "KAFKA_RELAY_SPILL log lines of /aws/lambda/<function> (id r1)", 2_001)
    assert [r.id for r in parse_spill_lines(rig.log.getvalue().splitlines()).records] == ["r1"]


def test_a_failed_dlq_pointer_is_produced_again_and_names_the_spill_location(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, max_attempts=2)
    failures = iter([KafkaError(KafkaError._MSG_TIMED_OUT)] * 2)
    rig.producer.respond = lambda sent: (
        KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if sent.topic == "t"
        else next(failures, None))
    rig.engine.accept(rig.records(1, value=b"x" * 2_000))
    rig.step(6)
    pointers = [m for m in rig.producer.sent if m.topic == "dlq.t"]
    assert len(pointers) == 3  # two timed out, the third was acknowledged
    assert all(m.headers["x-relay-spilled-to"]
               == b"KAFKA_RELAY_SPILL log lines of /aws/lambda/<function> (id r1)"
               for m in pointers)
    assert [e["attempts"] for e in rig.events("dead_letter.pointer_retry")] == [1, 2]
    assert rig.events("dead_letter.pointer_failed") == []


def test_a_dlq_pointer_that_keeps_failing_is_logged_once_with_its_spill_location(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, max_attempts=1)
    rig.producer.respond = lambda sent: KafkaError(
        KafkaError.MSG_SIZE_TOO_LARGE if sent.topic == "t" else KafkaError._MSG_TIMED_OUT)
    rig.engine.accept(rig.records(1, value=b"x" * 2_000))
    rig.step(6)
    assert len([m for m in rig.producer.sent if m.topic == "dlq.t"]) == 2
    (failed,) = rig.events("dead_letter.pointer_failed")
    assert (failed["id"], failed["attempts"]) == ("r1", 2)
    assert failed["spilled_to"] == "KAFKA_RELAY_SPILL log lines of /aws/lambda/<function> (id r1)"


def test_a_dlq_pointer_unacknowledged_when_the_pump_stops_is_logged_with_its_place(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.producer.respond = error_for("t", KafkaError.MSG_SIZE_TOO_LARGE)
    rig.engine.accept(rig.records(1, value=b"x" * 2_000))
    rig.step()  # the record is refused as too large
    rig.producer.hold = True  # the DLQ does not answer
    rig.step()  # spilled; its pointer is produced and waits for its report
    assert rig.events("dead_letter.pointer_failed") == []
    rig.engine.pump.stop(join_s=0)
    (failed,) = rig.events("dead_letter.pointer_failed")
    assert (failed["id"], failed["error"]) == (
        "r1", "the extension stopped before the DLQ acknowledged it")
    assert failed["spilled_to"].startswith("KAFKA_RELAY_SPILL log lines of ")


@pytest.mark.parametrize("error", [OverflowError("int too big to convert"),
                                   TypeError("bad header"), RuntimeError("anything")])
def test_a_produce_call_that_raises_dead_letters_that_record_and_the_pump_goes_on(
    tmp_path: Path, error: BaseException
) -> None:
    rig = Rig(tmp_path)
    rig.producer.raise_on_produce = (
        lambda sent: error if sent.topic == "t" and sent.key == b"poison" else None)
    poison = Record(id="r0", topic="t", key=b"poison", value=b"v", request_id="req-1")
    rig.engine.accept([poison, *rig.records(2)])
    rig.step(2)
    rig.assert_accounted()
    counts = rig.counts()
    assert (counts["delivered"], counts["dead_lettered"]) == (2, 1)
    dlq = rig.producer.sent[-1]
    assert dlq.topic == "dlq.t"
    assert dlq.headers["x-relay-error"].startswith(
        f"produce raised {type(error).__name__}".encode())
    assert rig.engine.gauge().failure is None
    assert rig.events("record.unproducible")


def test_a_record_that_not_even_the_dlq_can_take_is_spilled(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.producer.raise_on_produce = (
        lambda sent: OverflowError("timestamp") if sent.timestamp >= 2**63 else None)
    bad = rig.records(1, timestamp_ms=2**63)
    rig.engine.accept([*bad, *rig.records(1)])
    rig.step(3)
    rig.assert_accounted()
    counts = rig.counts()
    assert (counts["delivered"], counts["spilled"], counts["spooled"]) == (1, 1, 0)
    assert [r.id for r in parse_spill_lines(rig.log.getvalue().splitlines()).records] == ["r1"]


@pytest.mark.parametrize(("raised", "expect"), [
    (KafkaException(KafkaError(KafkaError._INVALID_ARG)), "_INVALID_ARG"),
    (KafkaException("no KafkaError inside"), "KafkaException"),
])
def test_a_kafka_exception_from_produce_is_routed_like_its_error(
    tmp_path: Path, raised: KafkaException, expect: str
) -> None:
    rig = Rig(tmp_path)
    rig.producer.raise_on_produce = (
        lambda sent: raised if sent.topic == "t" else None)
    rig.engine.accept(rig.records(1))
    rig.step(2)
    rig.assert_accounted()
    assert rig.counts()["dead_lettered"] == 1
    assert rig.producer.sent[-1].headers["x-relay-error"].startswith(expect.encode())


def test_dlq_down_after_a_permanent_error_spools_then_a_restore_dead_letters(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, max_attempts=2, retry_backoff_ms=0)
    dlq_up = False

    def respond(sent: Sent) -> KafkaError | None:
        if sent.topic == "t":
            return KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
        return None if dlq_up else KafkaError(KafkaError._MSG_TIMED_OUT)

    rig.producer.respond = respond
    rig.engine.accept(rig.records(2))
    for _ in range(10):
        rig.step()
        rig.assert_accounted()
    counts = rig.counts()
    assert (counts["spooled"], counts["spilled"], counts["dead_lettered"]) == (2, 0, 0)
    assert len(list((tmp_path / "spool").glob("kafka-relay-spool-*.ndjson"))) == 1
    dlq_up = True
    assert rig.engine.restore_spool() == 2
    rig.step(2)
    counts = rig.counts()
    assert (counts["restored"], counts["dead_lettered"]) == (2, 2)
    assert not list((tmp_path / "spool").glob("*.ndjson"))
    rig.assert_accounted()


def test_a_dlq_that_refuses_the_record_spills_it_without_the_spool(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.producer.respond = (
        lambda _sent: KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    rig.engine.accept(rig.records(1))
    rig.step(3)
    counts = rig.counts()
    assert (counts["spilled"], counts["spooled"], counts["dead_lettered"]) == (1, 0, 0)
    rig.assert_accounted()


def test_a_full_buffer_refuses_the_whole_request_naming_the_limit(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limits=Limits(records=3, bytes=1_000_000), spool_max_bytes=0)
    rig.engine.accept(rig.records(2))
    with pytest.raises(BufferFull, match="KAFKA_RELAY_MAX_BUFFER_RECORDS") as refused:
        rig.engine.accept(rig.records(2))
    assert refused.value.retry_after_ms > 0
    assert rig.counts()["rejected"] == 2
    assert rig.engine.gauge().pending == 2
    rig.assert_accounted()


def test_a_watch_reports_each_outcome_and_pending(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.producer.respond = lambda s: (
        KafkaError(KafkaError._TRANSPORT) if s.relay_id == "r2" else None)
    watch = rig.engine.accept(rig.records(2), watch=True)
    assert watch is not None
    rig.step()
    outcomes = watch.wait(0)
    assert [(o["id"], o["outcome"]) for o in outcomes] == [("r1", "delivered"),
                                                          ("r2", "pending")]


def test_librdkafka_holds_at_most_the_in_flight_byte_cap_of_a_stalled_backlog(
    tmp_path: Path,
) -> None:
    limits = Limits(records=100, bytes=100 * 1024 * 1024)
    rig = Rig(tmp_path, producer=lambda: FakeProducer(hold=True), limits=limits)
    rig.engine.accept(rig.records(5, value=b"x" * (in_flight_window(limits.bytes) * 3 // 8)))
    rig.step(3)
    assert len(rig.producer.sent) == 2  # 6/8 of the cap; a third would pass it
    rig.producer.hold = False
    rig.step(4)
    assert rig.counts()["delivered"] == 5
    rig.assert_accounted()


def test_the_in_flight_window_is_an_eighth_of_the_buffer_within_its_bounds() -> None:
    assert in_flight_window(1_989_824) == 248_728  # 256 MB's default buffer
    assert in_flight_window(100_000) == 128 * 1024
    assert in_flight_window(10**9) == 8 * 1024 * 1024


def test_a_record_larger_than_the_in_flight_cap_still_goes_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limits=Limits(records=10, bytes=100 * 1024 * 1024))
    rig.engine.accept(rig.records(2, value=b"x" * (9 * 1024 * 1024)))
    rig.step(2)
    assert rig.counts()["delivered"] == 2
    assert rig.engine.status()["in_flight"] == 0
    rig.assert_accounted()


def test_a_record_larger_than_the_window_goes_at_its_turn_while_a_stalled_broker_holds_others(
    tmp_path: Path,
) -> None:
    """Waiting could never make room for it while nothing is delivered; and one over Kafka's
    size limit must reach librdkafka to be refused and routed (spilled, with a DLQ pointer)."""
    limits = Limits(records=100, bytes=10 * 1024 * 1024)
    window = in_flight_window(limits.bytes)
    rig = Rig(tmp_path, producer=lambda: FakeProducer(hold=True), limits=limits)
    rig.engine.accept(rig.records(2, value=b"s" * 100))
    rig.step(2)
    assert len(rig.producer.sent) == 2  # in flight, never acknowledged
    rig.engine.accept(rig.records(1, value=b"b" * (window + 1)))
    rig.engine.accept(rig.records(1, value=b"s" * (window // 2)))
    rig.step(3)
    assert [len(s.value or b"") for s in rig.producer.sent] == [100, 100, window + 1]


@dataclass
class _CountingProducer(FakeProducer):
    """Counts poll and flush calls apart; ``held`` stands for what librdkafka holds without a
    record of ours in flight (a report or client error not handed over yet, a DLQ pointer)."""

    polls: int = 0
    flushes: int = 0
    held: int = 0
    timeouts: list[float] = field(default_factory=list)  # the polls'

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        self.timeouts.append(timeout)
        return super().poll(timeout)

    def flush(self, timeout: float = 0) -> int:
        self.flushes += 1
        super().poll(timeout)
        return len(self.waiting)

    def __len__(self) -> int:
        return self.held + super().__len__()


def _polls_during(producer: _CountingProducer, seconds: float) -> int:
    before = producer.polls
    time.sleep(seconds)
    return producer.polls - before


def test_an_idle_pump_polls_only_while_librdkafka_holds_something_or_the_broker_never_answered(
        tmp_path: Path) -> None:
    """No timer once the broker answered and nothing is held: a timed wake fired at every
    thaw of a frozen environment. Before the broker answered (the init probe waits on client
    errors) and while librdkafka holds anything, the 50 ms polls that hand its callbacks over
    go on; records wake the pump as before."""
    rig = Rig(tmp_path, producer=_CountingProducer)
    producer = rig.producer
    assert isinstance(producer, _CountingProducer)
    pump = rig.engine.pump
    pump.start()
    try:
        assert _polls_during(producer, 0.4) >= 4  # the broker has not answered yet
        pump.broker_state = BrokerState.UP  # what a probe that got an answer sets
        time.sleep(0.1)  # a wait begun before ends
        assert _polls_during(producer, 0.4) == 0
        producer.held = 1
        rig.engine.accept(rig.records(1))  # wakes it: from now on it sees what is held
        assert _polls_during(producer, 0.4) >= 4
        producer.held = 0
        time.sleep(0.1)
        assert _polls_during(producer, 0.4) == 0
        rig.engine.accept(rig.records(2))
        deadline = time.monotonic() + 5
        while rig.counts()["delivered"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rig.counts()["delivered"] == 3
        assert _polls_during(producer, 0.4) == 0
        rig.assert_accounted()
    finally:
        rig.engine.stop()


def _until(done: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.002)
    return done()


def _pump_holding(tmp_path: Path, count: int) -> tuple[Rig, _CountingProducer, int]:
    """A running pump (the broker answered) with ``count`` records in flight at a broker that
    has not answered them yet; the polls before they came."""
    rig = Rig(tmp_path, producer=lambda: _CountingProducer(hold=True))
    producer = rig.producer
    assert isinstance(producer, _CountingProducer)
    rig.engine.pump.broker_state = BrokerState.UP
    rig.engine.pump.start()
    time.sleep(0.1)  # its first round is over: idle, without a timer
    before = producer.polls
    rig.engine.accept(rig.records(count))
    assert _until(lambda: len(producer.sent) == count)
    return rig, producer, before


@pytest.fixture
def ten_second_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unwatched rounds 10 s apart: within a test only a wake-up brings the next one."""
    monkeypatch.setattr(pump_module, "_UNWATCHED_ROUND_S", 10.0)


def test_records_in_flight_that_nobody_waits_for_are_polled_once_per_slow_round(
        tmp_path: Path) -> None:
    """No 1 ms polls while nobody waits for outcomes, past a batch's eager ones: rounds at
    least 5 ms apart."""
    rig, producer, _ = _pump_holding(tmp_path, 3)
    try:
        time.sleep(0.1)  # past the eager rounds
        polls = _polls_during(producer, 0.3)
        assert 3 <= polls <= 0.3 / 0.005 + 1
        assert producer.flushes == 0
        producer.hold = False
        assert _until(lambda: rig.counts()["delivered"] == 3)
        rig.assert_accounted()
    finally:
        rig.engine.stop()


@pytest.mark.usefixtures("ten_second_rounds")
def test_records_in_flight_that_nobody_waits_for_get_no_poll_before_the_next_round(
        tmp_path: Path) -> None:
    rig, producer, before = _pump_holding(tmp_path, 3)
    try:
        time.sleep(0.3)
        rig.clock.advance(50)  # past the batch's 5 ms linger
        # The round that produced them, with poll(0), then the eager 1 ms polls, then none.
        assert producer.polls - before == 1 + pump_module._EAGER_ROUNDS
        assert producer.timeouts[-pump_module._EAGER_ROUNDS - 1:] == [
            0, *[0.001] * pump_module._EAGER_ROUNDS]
        assert producer.flushes == 0
        # A new batch wakes it at once for one round (its reports taken with poll(0)); the
        # batch waits behind the one in flight (their reports never came), not in librdkafka.
        rig.engine.accept(rig.records(2))
        assert _until(lambda: producer.polls - before == 2 + pump_module._EAGER_ROUNDS, 2.0)
        time.sleep(0.1)
        assert producer.polls - before == 2 + pump_module._EAGER_ROUNDS
        assert producer.timeouts[-1] == 0
        assert len(producer.sent) == 3
        assert rig.counts()["delivered"] == 0
    finally:
        rig.engine.stop()


def _two_behind_a_batch_in_flight(tmp_path: Path,
                                  settle_s: float) -> tuple[Rig, _CountingProducer]:
    """Three records in flight, held by the broker; two more accepted past that batch's linger,
    and ``settle_s`` for the pump to take them if it would: none of them is sent."""
    rig, producer, _ = _pump_holding(tmp_path, 3)
    try:
        rig.clock.advance(50)  # past the batch's 5 ms linger
        rig.engine.accept(rig.records(2))
        time.sleep(settle_s)
        assert len(producer.sent) == 3
    except BaseException:
        rig.engine.stop()
        raise
    return rig, producer


def test_records_that_would_queue_behind_a_batch_in_flight_wait_for_its_reports(
        tmp_path: Path) -> None:
    """Past the linger of the batch in flight (librdkafka's idempotent producer would hold
    them behind it, its broker thread polling without a wait): the next records stay queued
    until its reports came, then go."""
    rig, producer = _two_behind_a_batch_in_flight(tmp_path, 0.1)
    try:
        assert rig.engine.status()["in_flight"] == 3
        producer.hold = False  # the broker answers
        assert _until(lambda: len(producer.sent) == 5, 2.0)
        assert _until(lambda: rig.counts()["delivered"] == 5, 2.0)
        assert producer.flushes == 0
        rig.assert_accounted()
    finally:
        rig.engine.stop()


def test_a_flush_takes_records_held_behind_a_batch_in_flight_at_once(tmp_path: Path) -> None:
    rig, producer = _two_behind_a_batch_in_flight(tmp_path, 0.05)
    try:
        flushing = threading.Thread(target=lambda: rig.engine.flush(5.0), daemon=True)
        flushing.start()
        assert _until(lambda: len(producer.sent) == 5, 1.0)
        producer.hold = False
        flushing.join(5.0)
        assert rig.counts()["delivered"] == 5
        rig.assert_accounted()
    finally:
        rig.engine.stop()


@pytest.mark.parametrize(("env", "seconds"), [
    ({}, 0.005),  # the default
    ({"KAFKA_PRODUCER_LINGER_MS": "20"}, 0.02),
    ({"KAFKA_PRODUCER_QUEUE_BUFFERING_MAX_MS": "7.5"}, 0.0075),  # librdkafka's alias
    ({"KAFKA_PRODUCER_LINGER_MS": "soon"}, 0.005),  # refused when the producer is built
])
def test_the_pump_times_the_batch_forming_with_the_linger_the_producer_is_built_with(
        env: dict[str, str], seconds: float) -> None:
    assert linger_s(load_config({"KAFKA_BOOTSTRAP_SERVERS": "fake:9092", **env})) == seconds


def test_records_handed_over_within_the_linger_join_the_batch_forming(tmp_path: Path) -> None:
    """Within ``linger.ms`` of the produce that found nothing in flight, librdkafka still
    forms that batch: new records go at once and share its request."""
    rig, producer, _ = _pump_holding(tmp_path, 3)
    try:
        rig.clock.advance(2)  # within the 5 ms linger, less the margin producing takes
        rig.engine.accept(rig.records(2))
        assert _until(lambda: len(producer.sent) == 5, 1.0)
    finally:
        rig.engine.stop()


@pytest.mark.usefixtures("ten_second_rounds")
def test_a_flush_request_wakes_a_pump_between_slow_rounds_at_once(tmp_path: Path) -> None:
    """The flush's rounds flush (no poll, no wait) until the outcomes are in; then the pump
    is idle as before: no timer once nothing is held."""
    rig, producer, before = _pump_holding(tmp_path, 3)
    try:
        time.sleep(0.1)
        producer.hold = False  # the reports are ready: only a wake-up hands them over now
        started = time.monotonic()
        result = rig.engine.flush(5.0)
        assert result.delivered == 3
        assert time.monotonic() - started < 2.0
        assert producer.flushes >= 1
        assert producer.polls - before == 1 + pump_module._EAGER_ROUNDS
        time.sleep(0.1)  # the round after the flush, then idle
        flushes, polls = producer.flushes, producer.polls
        time.sleep(0.3)
        assert (producer.flushes, producer.polls) == (flushes, polls)
        rig.assert_accounted()
    finally:
        rig.engine.stop()


@pytest.mark.usefixtures("ten_second_rounds")
def test_a_delivery_watch_wakes_a_pump_between_slow_rounds_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, producer=lambda: _CountingProducer(hold=True))
    producer = rig.producer
    assert isinstance(producer, _CountingProducer)
    rig.engine.pump.broker_state = BrokerState.UP
    rig.engine.pump.start()
    try:
        watch = rig.engine.accept(rig.records(2), watch=True)
        assert watch is not None
        assert _until(lambda: len(producer.sent) == 2)
        time.sleep(0.1)
        assert producer.flushes == 0
        producer.hold = False
        started = time.monotonic()
        outcomes = watch.wait(5.0)
        assert [o["outcome"] for o in outcomes] == ["delivered", "delivered"]
        assert time.monotonic() - started < 2.0
        assert producer.flushes >= 1
    finally:
        rig.engine.stop()


def test_a_watch_on_records_waiting_out_a_backoff_does_not_make_the_pump_flush(
        tmp_path: Path) -> None:
    """Nothing in flight while a waiter waits (its records wait out a retry backoff): the pump
    has nothing to flush and sleeps; it used to flush in a loop that returned at once."""
    rig = Rig(tmp_path, producer=_CountingProducer, retry_backoff_ms=10_000)
    producer = rig.producer
    assert isinstance(producer, _CountingProducer)
    producer.respond = error_for("t", KafkaError._MSG_TIMED_OUT)
    rig.engine.pump.broker_state = BrokerState.UP
    rig.engine.pump.start()
    try:
        watch = rig.engine.accept(rig.records(2), watch=True)
        assert watch is not None
        assert _until(lambda: rig.engine.status()["waiting_retry"] == 2)
        polls = producer.polls
        outcomes: list[list[dict[str, str | None]]] = []
        waiter = threading.Thread(target=lambda: outcomes.append(watch.wait(1.0)), daemon=True)
        waiter.start()
        time.sleep(0.3)  # the watch waits (on the rig's clock, which stands still)
        assert producer.flushes == 0
        # Only the 50 ms polls of a broker that answered with an error (client errors), and
        # the round the watch's notify began.
        assert producer.polls - polls <= 0.3 / 0.05 + 2
        rig.clock.advance(1_000)  # its timeout passes; the backoff's 10 s do not
        waiter.join(5.0)
        assert [o["outcome"] for o in outcomes[0]] == ["pending", "pending"]
        rig.assert_accounted()
    finally:
        rig.clock.advance(1_000)
        rig.engine.stop()


def test_the_per_invocation_ledger_read_agrees_with_the_full_one_without_the_storage_status(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.accept(rig.records(3))
    ledger = rig.engine._ledger
    light, full = ledger.state(storage=False), ledger.state()
    assert (light.journal, light.overflow, light.rings) == (None, None, None)
    assert full.journal is not None
    assert full.journal["records"] == 3
    assert full.rings == {"files": 0, "records": 0}
    assert light._replace(journal=None, overflow=None, rings=None) == full._replace(
        journal=None, overflow=None, rings=None)
    taken = ledger.state(take_outcomes=True, storage=False).by_request
    assert taken == {"req-1": {"accepted": 3}}
    assert ledger.state(take_outcomes=True, storage=False).by_request == {}


@pytest.mark.usefixtures("ten_second_rounds")
def test_a_held_pump_sends_what_it_was_given_then_runs_no_round_until_held_again_or_flushed(
        tmp_path: Path) -> None:
    """``hold`` (a deferred invocation's handler ended): one round, then none — no batch of
    what comes next, no poll for the reports that come in — until the next ``hold`` or a
    ``release``; a flush request still runs at once."""
    rig = Rig(tmp_path, producer=lambda: _CountingProducer(hold=True))
    producer = rig.producer
    assert isinstance(producer, _CountingProducer)
    pump = rig.engine.pump
    pump.broker_state = BrokerState.UP
    pump.start()
    try:
        time.sleep(0.1)
        rig.engine.accept(rig.records(3))
        pump.hold()
        assert _until(lambda: len(producer.sent) == 3)
        time.sleep(0.1)
        polls = producer.polls
        producer.hold = False  # their reports are ready: only a round hands them over
        rig.engine.accept(rig.records(2))  # the next handler's records
        time.sleep(0.3)
        assert (len(producer.sent), producer.polls, rig.counts()["delivered"]) == (3, polls, 0)
        pump.hold()  # the next handler ended: its records go, the reports are taken
        assert _until(lambda: rig.counts()["delivered"] == 5)
        assert len(producer.sent) == 5
        rig.engine.accept(rig.records(1))
        time.sleep(0.1)
        assert len(producer.sent) == 5
        assert rig.engine.flush(5.0).delivered == 1  # a flush does not wait for a round
        pump.hold(False)
        rig.engine.accept(rig.records(1))
        assert _until(lambda: rig.counts()["delivered"] == 7)
        rig.assert_accounted()
    finally:
        rig.engine.stop()
