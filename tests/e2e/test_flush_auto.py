"""``KAFKA_RELAY_FLUSH=auto`` (the default) and the bounded waits, in the local sandbox with the
built layer and a real broker: the environment is frozen between invocations, as in Lambda.
Records are counted in (the ids the extension returned) and out (by x-relay-id on the topic,
and the SHUTDOWN summary)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from devtools.kafka_broker import free_port
from devtools.sandbox import Sandbox
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts, Broker

FUNCTION = Path(__file__).resolve().parent.parent / "fixtures" / "any_function"
BOUND_MS = 1_000  # KAFKA_RELAY_MAX_LATENCY_MS: short, so "sparse" and "a long freeze" are short


def _sandbox(artifacts: Artifacts, broker: Broker, topic: str,
             handler: str = "any_producer.handler", **env: str) -> Sandbox:
    return Sandbox(
        layers=[artifacts.layer], function=FUNCTION, handler=handler,
        env={"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_TOPIC": topic,
             "KAFKA_RELAY_PORT": str(free_port()), "KAFKA_RELAY_MAX_LATENCY_MS": str(BOUND_MS),
             **env},
        function_name="auto-producer", timeout_s=10.0,
    )


def _invoke(sandbox: Sandbox, run: str, count: int) -> list[str]:
    result = sandbox.invoke({"run": run, "count": count})
    assert result.status == "success", result.error
    assert isinstance(result.payload, dict)
    return list(result.payload["ids"])


def _switches(lines: list[str]) -> list[bool]:
    return [bool(e["deferring"]) for e in events_named(lines, "flush.auto")]


def _assert_all_delivered(lines: list[str], broker: Broker, topic: str,
                          sent: list[str]) -> None:
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["accepted"], summary["unaccounted"], summary["pending"]) == (len(sent), 0, 0)
    assert summary["delivered"] == len(sent)
    # Records frozen past their message timeout are re-sent: duplicates, so read by id.
    got = broker.read_ids(topic, sent, timeout=30)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)


def _until_deferring(sandbox: Sandbox, sent: list[str], run: str) -> None:
    """Back-to-back invocations until auto stops waiting (bounded)."""
    for n in range(30):
        sent += _invoke(sandbox, f"{run}{n}", 10)
        if True in _switches(sandbox.log_lines()):
            return
    pytest.fail("auto never deferred during 30 back-to-back invocations")


def test_sparse_invocations_are_flushed_before_each_freeze(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    sent: list[str] = []
    with _sandbox(artifacts, broker, topic) as sandbox:
        for n in range(5):
            sent += _invoke(sandbox, f"sparse{n}", 10)
            # Frozen now: this invocation's records are already on the topic.
            assert len(broker.read(topic, expected=len(sent), timeout=5)) == len(sent)
            time.sleep(BOUND_MS / 1000)  # a gap as long as the bound: sparse
        lines = sandbox.log_lines()
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert True not in _switches(lines)
    _assert_all_delivered(lines, broker, topic, sent)


def test_a_burst_defers_after_warm_up_and_later_invocations_carry_the_records_out(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    sent: list[str] = []
    with _sandbox(artifacts, broker, topic) as sandbox:
        _until_deferring(sandbox, sent, "burst")
        burst = list(sent)
        for n in range(10):  # the following invocations carry the burst's records out
            sent += _invoke(sandbox, f"next{n}", 1)
            on_topic = {r.headers["x-relay-id"].decode()
                        for r in broker.read_ids(topic, burst, timeout=2)}
            if set(burst) <= on_topic:
                break
        assert set(burst) <= on_topic, "the following invocations delivered the burst"
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert _switches(lines)[:2] == [False, True]
    (first,) = [e for e in events_named(lines, "flush.auto") if e["deferring"]]
    assert "deferred" in first["reason"]
    _assert_all_delivered(lines, broker, topic, sent)


def test_records_deferred_before_a_freeze_longer_than_the_bound_go_out_at_the_next_thaw(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    sent: list[str] = []
    # Records frozen past their local message timeout fail as a transient error and are
    # sent again: never lost.
    timeouts: Mapping[str, str] = {"KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS": "800",
                                   "KAFKA_RELAY_RETRY_BACKOFF_MS": "100",
                                   "KAFKA_RELAY_MAX_ATTEMPTS": "50"}
    with _sandbox(artifacts, broker, topic, **timeouts) as sandbox:
        _until_deferring(sandbox, sent, "before")
        time.sleep(3 * BOUND_MS / 1000)  # frozen three times the bound
        for n in range(5):  # after the freeze: flushed again until the rhythm is back
            sent += _invoke(sandbox, f"thaw{n}", 10)
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    switches = _switches(lines)
    assert switches[:3] == [False, True, False], "the long gap made auto flush again"
    after_freeze = [e for e in events_named(lines, "flush.auto") if not e["deferring"]][1]
    # Why it flushes again: the gap (sparse), the oldest record's age, or — when the records
    # frozen past message.timeout.ms failed on the thaw and are being re-sent — that no
    # delivery has been confirmed since. Each is a reason not to defer; none is "deferred".
    assert any(why in after_freeze["reason"]
               for why in ("sparse", "oldest record", "no delivery confirmed"))
    _assert_all_delivered(lines, broker, topic, sent)


def test_shutdown_right_after_a_deferred_invocation_loses_nothing(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    sent: list[str] = []
    with _sandbox(artifacts, broker, topic) as sandbox:
        _until_deferring(sandbox, sent, "deferred")
        sent += _invoke(sandbox, "last", 50)  # deferred too: nothing waits for its acks
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert shutdown.killed == []
    assert shutdown.exit_codes == {"kafka-relay": 0}
    _assert_all_delivered(lines, broker, topic, sent)


def test_an_undecorated_handler_without_telemetry_gets_a_bounded_wait_and_a_warning(
    artifacts: Artifacts, broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    sent: list[str] = []
    with _sandbox(artifacts, broker, topic, handler="any_producer.handler_without_end_call",
                  KAFKA_RELAY_TELEMETRY="false", KAFKA_RELAY_FLUSH="end") as sandbox:
        for n in range(3):
            result = sandbox.invoke({"run": f"plain{n}", "count": 10})
            assert result.status == "success", result.error
            sent += result.payload["ids"]
            done = [e for e in events_named(sandbox.log_lines(), "invocation.done")
                    if e.get("request_id") == result.request_id]
            assert (done[0]["delivered"], done[0]["pending"]) == (10, 0)
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    (warning,) = events_named(lines, "handler.end_unsignalled")
    assert "kafka_relay.client.relay_handler" in warning["hint"]
    # The wait ended because records stopped arriving, not at the invocation's deadline.
    assert warning["ended_by"] == "quiet"
    assert events_named(lines, "flush.incomplete") == []
    _assert_all_delivered(lines, broker, topic, sent)


def test_an_unreachable_broker_does_not_hold_init_the_probe_stops_at_the_transport_error(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    nobody = Broker(f"127.0.0.1:{free_port()}")  # nothing listens there
    with _sandbox(artifacts, nobody, "t", KAFKA_RELAY_INIT_PROBE_MS="10000") as sandbox:
        sandbox.start()
        sandbox.shutdown("spindown")
        # After the shutdown: the extension's output is read on a thread, and its last init
        # lines may not have been read yet when start() returns.
        lines = sandbox.log_lines()
    (unreachable,) = events_named(lines, "init.broker_unreachable")
    assert unreachable["probe_ended_by"] == "transport_error"
    (ready,) = events_named(lines, "init.ready")
    assert ready["broker_state"] == "unknown"
