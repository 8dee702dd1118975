"""The logs table adds up for any run: generated invocations drive the real engine and
listener, and the table read back from their log lines matches each record's own fate."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from confluent_kafka import KafkaError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent
from kafka_relay.lifecycle.listener import FlushReport
from kafka_relay.modes.engine_listener import EngineListener
from kafka_relay.record import Record
from kafka_relay.tools.table import LogLine, LogParser, View, events_named, summarise
from tests.unit.engine_fakes import Rig, Sent

# What the broker does with a record, by its value: deliver; refuse it (the DLQ takes it);
# refuse it and the DLQ too (spilled); time out everywhere (spooled, restored, spilled).
FATES = (b"ok", b"refused", b"lost", b"slow")


def _respond(sent: Sent) -> KafkaError | None:
    if sent.value == b"ok" or (sent.value == b"refused" and sent.topic.startswith("dlq.")):
        return None
    if sent.value == b"slow":
        return KafkaError(KafkaError._MSG_TIMED_OUT)
    return KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)


invocation = st.tuples(
    st.lists(st.sampled_from(FATES), max_size=6),  # the records it hands over
    st.integers(0, 3),  # pump steps while it runs
    st.booleans(),  # flushed (else deferred: reported at the next event)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(invocation, min_size=1, max_size=6), st.integers(0, 3))
def test_each_row_counts_its_own_records_where_they_ended_and_the_totals_agree(
    invocations: list[tuple[list[bytes], int, bool]], steps_after: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), max_attempts=1, retry_backoff_ms=100)
        rig.producer.respond = _respond
        listener = EngineListener(config=rig.config, engine=rig.engine, signals=HandlerSignals(),
                                 logger=rig.logger, wall_ms=rig.clock.wall_ms)
        sent_by: dict[str, str] = {}  # record id -> the invocation that handed it over
        for number, (fates, steps, flushed) in enumerate(invocations):
            request_id = f"req-{number}"
            rig.logger.write_raw(f"START RequestId: {request_id} Version: $LATEST")
            event = InvokeEvent(request_id, None)
            listener.on_invoke(event)
            records = [Record(id=f"{request_id}-{n}", topic="t", key=None, value=fate)
                       for n, fate in enumerate(fates)]
            if records:
                rig.engine.accept(records)
            sent_by.update((r.id, request_id) for r in records)
            for _ in range(steps):
                rig.step()
                rig.clock.advance(60_000)  # every retry falls due
            listener.invocation_done(event, FlushReport(1.0, 0) if flushed else None)
            rig.logger.write_raw(f"END RequestId: {request_id}")
            rig.logger.write_raw(f"REPORT RequestId: {request_id}\tDuration: 1.00 ms\t"
                                 "Billed Duration: 1 ms\tMemory Size: 128 MB\t"
                                 "Max Memory Used: 60 MB\t")
        for _ in range(steps_after):
            rig.step()
            rig.clock.advance(60_000)
        listener.shutdown(ShutdownEvent("spindown", rig.clock.wall_ms()))

    lines = rig.log.getvalue().splitlines()
    # Each record's own final place (DEBUG), attributed by our own bookkeeping.
    final: dict[str, str] = {}
    for outcome in events_named(lines, "record.outcome"):
        final[outcome["id"]] = outcome["outcome"]
    expected: dict[str, Counter[str]] = {}
    for record_id, request_id in sent_by.items():
        expected.setdefault(request_id, Counter())["accepted"] += 1
        expected[request_id][final[record_id]] += 1
    parser = LogParser()
    parser.feed_all(LogLine(line) for line in lines)
    table = summarise(parser, View())

    assert table["checks"] == []
    # The metrics ride on each invocation's own line; SHUTDOWN's go out alone.
    assert parser.emf_lines == len(invocations) + 1
    rows = {row["request_id"]: row for row in table["invocations"]}
    assert set(rows) == {f"req-{n}" for n in range(len(invocations))}
    for request_id, row in rows.items():
        counts = expected.get(request_id, Counter())
        for name in ("accepted", "delivered", "dead_lettered", "spilled"):
            assert row["counts"].get(name, 0) == counts[name], (request_id, name)
        assert row["pending"] == 0
        assert row["counts"].get("spooled", 0) == row["counts"].get("restored", 0)
    (summary,) = events_named(lines, "shutdown.summary")
    totals = table["totals"]
    for name in ("accepted", "delivered", "dead_lettered", "spilled", "spooled", "restored"):
        assert totals[name] == summary[name], name
    assert totals["accepted"] == len(sent_by)
    assert sum(e["records"] for e in events_named(lines, "spool.restored")) == summary["restored"]
