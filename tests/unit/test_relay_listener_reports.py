"""The listener's report lines: each invocation.done counts that invocation's own records,
and each spool restore is logged once."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import KafkaError

from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent
from kafka_relay.lifecycle.listener import FlushReport
from kafka_relay.modes.engine_listener import EngineListener
from kafka_relay.record import Record
from tests.unit.engine_fakes import Rig


def _listener(rig: Rig) -> EngineListener:
    return EngineListener(config=rig.config, engine=rig.engine, signals=HandlerSignals(),
                         logger=rig.logger, wall_ms=rig.clock.wall_ms)


def _send(rig: Rig, request_id: str, count: int) -> None:
    rig.engine.accept([Record(id=f"{request_id}-{n}", topic="t", key=None, value=b"v")
                       for n in range(count)])


def test_an_invocation_that_did_not_wait_is_reported_at_the_next_event_with_its_records(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    listener = _listener(rig)
    first, second = InvokeEvent("r1", None), InvokeEvent("r2", None)
    listener.on_invoke(first)
    listener.invocation_done(first, None)  # deferred: the handler runs on after this
    _send(rig, "r1", 5)  # the handler sends its records after the extension moved on
    assert rig.events("invocation.done") == []
    listener.on_invoke(second)
    _send(rig, "r2", 2)
    rig.step()
    listener.invocation_done(second, FlushReport(1.0, 0))
    listener.shutdown(ShutdownEvent("spindown", rig.clock.wall_ms()))

    done = rig.events("invocation.done")
    assert [(e["request_id"], e["accepted"]) for e in done] == [("r1", 5), ("r2", 2)]
    outcomes = [e["by_request"] for e in rig.events("records.outcomes")]
    assert outcomes[0] == {"r1": {"accepted": 5}}
    assert outcomes[1] == {"r1": {"delivered": 5}, "r2": {"accepted": 2, "delivered": 2}}


def test_a_spool_restore_is_logged_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_attempts=1, retry_backoff_ms=100)
    rig.producer.respond = lambda _sent: KafkaError(KafkaError._MSG_TIMED_OUT)
    listener = _listener(rig)
    listener.on_invoke(InvokeEvent("r1", None))
    _send(rig, "r1", 3)
    for _ in range(4):  # topic, then the DLQ twice: spooled for a later invocation
        rig.step()
        rig.clock.advance(60_000)
    assert rig.counts()["spooled"] == 3
    listener.on_invoke(InvokeEvent("r2", None))

    (restored,) = rig.events("spool.restored")
    assert restored["records"] == 3 == rig.counts()["restored"]


def test_each_invocation_writes_one_line_carrying_its_counts_and_their_emf_metrics(
    tmp_path: Path,
) -> None:
    """One JSON object per invocation: the invocation.done fields and a valid EMF
    declaration with the same counts; at SHUTDOWN the metrics go out on a line of their own."""
    rig = Rig(tmp_path)
    listener = _listener(rig)
    for request_id, count in (("r1", 3), ("r2", 0)):
        event = InvokeEvent(request_id, None)
        listener.on_invoke(event)
        _send(rig, request_id, count)
        rig.step()
        listener.invocation_done(event, FlushReport(2.5, 0))
    listener.shutdown(ShutdownEvent("spindown", rig.clock.wall_ms()))

    lines = [json.loads(line) for line in rig.log.getvalue().splitlines()]
    with_metrics = [line for line in lines if "_aws" in line]
    assert [line.get("event") for line in with_metrics] == ["invocation.done",
                                                            "invocation.done", None]
    for line, accepted in zip(with_metrics, (3, 0), strict=False):
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        declared = {m["Name"] for m in directive["Metrics"]}
        assert {"RecordsAccepted", "RecordsDelivered", "FlushMs"} <= declared
        assert all(name in line for name in declared)
        assert (line["accepted"], line["RecordsAccepted"]) == (accepted, accepted)
        assert (line["delivered"], line["RecordsDelivered"]) == (accepted, accepted)
        assert line["FlushMs"] == line["flush_ms"] == 2.5
        assert line["FunctionName"] == (rig.config.function_name or "unknown")
    assert len(rig.events("invocation.done")) == 2


def test_a_deferred_invocation_whose_handler_ended_is_reported_at_once(tmp_path: Path) -> None:
    """``auto`` deferring with a decorated handler: the loop waited for the handler's end,
    so the line goes out before /next and counts that invocation's records."""
    rig = Rig(tmp_path)
    listener = _listener(rig)
    first, second = InvokeEvent("r1", None), InvokeEvent("r2", None)
    listener.on_invoke(first)
    _send(rig, "r1", 4)
    listener.invocation_done(first, None, deferred=True)
    assert [(e["request_id"], e["accepted"]) for e in rig.events("invocation.done")] == [
        ("r1", 4)]
    listener.on_invoke(second)  # nothing left to report for r1
    _send(rig, "r2", 1)
    listener.invocation_done(second, None, deferred=True)
    listener.shutdown(ShutdownEvent("spindown", rig.clock.wall_ms()))
    done = rig.events("invocation.done")
    assert [(e["request_id"], e["accepted"]) for e in done] == [("r1", 4), ("r2", 1)]
    rig.assert_accounted()
