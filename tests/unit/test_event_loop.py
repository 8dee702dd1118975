"""The event loop against a scripted Extensions API and a recording listener (no HTTP, no
broker): what it asks of the listener, per flush policy, and that listener failures
never kill it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from kafka_relay.config import load_config
from kafka_relay.errors import LambdaApiError
from kafka_relay.lifecycle.breaker import FIRST_PROBE_INTERVAL_MS, PROBE_BUDGET_MS
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent, UnknownEvent, parse_event
from kafka_relay.lifecycle.listener import FlushReport, ShutdownSummary
from kafka_relay.lifecycle.loop import EventLoop
from kafka_relay.lifecycle.policy import WARMUP_INVOCATIONS, Observed
from kafka_relay.observability.log import JsonLogger

NOW = 1_000_000


class ScriptedApi:
    """Answers event/next from a script; an exception in the script is raised."""

    def __init__(self, *events: dict[str, Any] | Exception, clock: list[int] | None = None,
                 step_ms: int = 0) -> None:
        self._events = list(events)
        self.exit_errors: list[tuple[str, str]] = []
        self.on_request_next: Callable[[], None] = lambda: None
        self._clock, self._step_ms = clock, step_ms

    def next_event(self) -> dict[str, Any]:
        if self._clock is not None:
            self._clock[0] += self._step_ms
        event = self._events.pop(0)
        if isinstance(event, Exception):
            raise event
        return event

    def request_next(self) -> None:
        self.on_request_next()

    def exit_error(self, error_type: str, message: str) -> None:
        self.exit_errors.append((error_type, message))


@dataclass
class RecordingListener:
    fail_on: set[str] = field(default_factory=set)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    done: bool = True
    called: bool = False  # the client's end call came (a decorated handler)
    observed: Observed = field(default_factory=Observed)
    flush_results: list[FlushReport] = field(default_factory=list)  # then: all delivered
    published: list[dict[str, object]] = field(default_factory=list)

    def _call(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if name in self.fail_on:
            raise RuntimeError(f"{name} broke")

    def on_invoke(self, event: InvokeEvent) -> None:
        self._call("on_invoke", event.request_id)

    def handler_done(self, request_id: str, timeout_s: float) -> bool:
        self._call("handler_done", (request_id, timeout_s))
        return self.done

    def observe(self) -> Observed:
        return self.observed

    def stopped(self) -> str | None:
        return self.observed.stopped

    def flush(self, budget_ms: int) -> FlushReport:
        self._call("flush", budget_ms)
        if self.flush_results:
            return self.flush_results.pop(0)
        return FlushReport(duration_ms=1.0, remaining=0)

    def publish(self, status: Any) -> None:
        self.published.append(dict(status))

    def ends_called(self) -> bool:
        return self.called

    def invocation_done(self, event: InvokeEvent, flush: FlushReport | None, *,
                        deferred: bool = False) -> None:
        self._call("invocation_done", (flush is not None, deferred))

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        self._call("shutdown", event)
        return ShutdownSummary(drained=0, spilled=0, pending=0, unaccounted=0)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _invoke(request_id: str, deadline_ms: int | None = NOW + 3_000, **extra: Any) -> dict[str, Any]:
    event = {"eventType": "INVOKE", "requestId": request_id, **extra}
    if deadline_ms is not None:
        event["deadlineMs"] = deadline_ms
    return event


_SHUTDOWN = {"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": NOW + 2_000}


def _run(api: ScriptedApi, listener: RecordingListener, flush: str = "end",
         clock: list[int] | None = None) -> tuple[int, list[dict[str, Any]]]:
    stream = io.StringIO()
    ticks = clock or [NOW]
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "h:9092", "KAFKA_RELAY_FLUSH": flush})
    loop = EventLoop(listener, config, JsonLogger(stream=stream, level="DEBUG"), api=api,
                     wall_ms=lambda: ticks[0])
    code = loop.run()
    return code, [json.loads(line) for line in stream.getvalue().splitlines()]


def test_invoke_waits_for_the_handler_then_flushes_and_shutdown_drains() -> None:
    api = ScriptedApi(_invoke("r1"), _SHUTDOWN)
    listener = RecordingListener()
    code, _ = _run(api, listener)
    assert code == 0
    assert listener.names() == ["on_invoke", "handler_done", "flush", "invocation_done",
                                "shutdown"]
    assert listener.calls[1] == ("handler_done", ("r1", 2.95))  # deadline minus the margin
    assert listener.calls[2] == ("flush", 2_950)
    assert listener.calls[4] == ("shutdown", ShutdownEvent("spindown", NOW + 2_000))
    assert api.exit_errors == []


def test_auto_flushes_while_warming_up_then_stops_waiting_for_frequent_invocations() -> None:
    clock = [NOW]
    n = WARMUP_INVOCATIONS + 3
    api = ScriptedApi(*[_invoke(f"r{i}", deadline_ms=NOW + 60_000) for i in range(n)],
                      _SHUTDOWN, clock=clock, step_ms=100)
    listener = RecordingListener()
    _, log = _run(api, listener, flush="auto", clock=clock)
    # the invocation that completes the warm-up may already defer
    assert listener.names().count("flush") == WARMUP_INVOCATIONS - 1
    assert listener.names()[-5:] == ["on_invoke", "invocation_done", "on_invoke",
                                     "invocation_done", "shutdown"]
    switches = [e for e in log if e["event"] == "flush.auto"]
    assert [e["deferring"] for e in switches] == [False, True]
    assert listener.published[-1]["deferring"] is True


def test_a_deferring_auto_waits_for_an_end_the_client_tells_but_does_not_flush() -> None:
    """With the client's end call (a decorated handler) a deferred invocation waits for the
    handler to end and sends /next before the listener's own work for it, which so runs
    after the handler instead of beside it; without one it calls /next at once, as
    Telemetry's end comes 25 ms or more late."""
    for called in (True, False):
        clock = [NOW]
        n = WARMUP_INVOCATIONS + 3
        api = ScriptedApi(*[_invoke(f"r{i}", deadline_ms=NOW + 60_000) for i in range(n)],
                          _SHUTDOWN, clock=clock, step_ms=100)
        listener = RecordingListener(called=called)
        api.on_request_next = lambda listener=listener: listener.calls.append(  # type: ignore[misc]
            ("request_next", None))
        _run(api, listener, flush="auto", clock=clock)
        waited = ["handler_done", "request_next"] if called else []
        last_two = ["on_invoke", *waited, "invocation_done"] * 2
        assert listener.names()[-len(last_two) - 1:] == [*last_two, "shutdown"]
        done = [arg for name, arg in listener.calls if name == "invocation_done"]
        assert done[-2:] == [(False, called)] * 2  # not flushed; deferred past its end
        assert listener.names().count("flush") == WARMUP_INVOCATIONS - 1
        assert listener.names().count("handler_done") == (
            n if called else WARMUP_INVOCATIONS - 1)


def test_auto_flushes_again_when_the_oldest_record_nears_the_bound() -> None:
    clock = [NOW]
    n = WARMUP_INVOCATIONS + 2
    api = ScriptedApi(*[_invoke(f"r{i}", deadline_ms=NOW + 60_000) for i in range(n)],
                      _SHUTDOWN, clock=clock, step_ms=100)
    listener = RecordingListener(observed=Observed(pending=3, oldest_pending_ms=4_990))
    _run(api, listener, flush="auto", clock=clock)
    assert listener.names().count("flush") == n


def test_a_flush_that_settles_nothing_opens_the_breaker_and_later_invocations_skip_it() -> None:
    clock = [NOW]
    events = [_invoke(f"r{i}", deadline_ms=NOW + 60_000) for i in range(4)]
    api = ScriptedApi(*events, _SHUTDOWN, clock=clock, step_ms=10)
    listener = RecordingListener(observed=Observed(pending=5, settled=2),
                                 flush_results=[FlushReport(10_000.0, remaining=5)])
    code, log = _run(api, listener, flush="end", clock=clock)
    assert code == 0
    assert listener.names() == ["on_invoke", "handler_done", "flush", "invocation_done",
                                *["on_invoke", "invocation_done"] * 3, "shutdown"]
    assert [e["event"] for e in log if e["event"].startswith("breaker.")] == ["breaker.open"]
    assert listener.published[-1]["breaker"]["state"] == "open"  # type: ignore[index]


def test_the_open_breaker_probes_briefly_and_closes_when_a_record_settles() -> None:
    clock = [NOW]
    events = [_invoke(f"r{i}", deadline_ms=NOW + 60_000) for i in range(3)]
    api = ScriptedApi(*events, _SHUTDOWN, clock=clock, step_ms=FIRST_PROBE_INTERVAL_MS)
    listener = RecordingListener(observed=Observed(pending=5, settled=2),
                                 flush_results=[FlushReport(10_000.0, remaining=5),
                                                FlushReport(250.0, remaining=5)])

    class Settles(RecordingListener):
        def invocation_done(self, event: InvokeEvent, flush: FlushReport | None, *,
                            deferred: bool = False) -> None:
            super().invocation_done(event, flush, deferred=deferred)
            if event.request_id == "r1":  # the probe ran; the broker answers afterwards
                self.observed = Observed(pending=0, settled=7)

    listener = Settles(observed=listener.observed, flush_results=listener.flush_results)
    _, log = _run(api, listener, flush="end", clock=clock)
    flushes = [arg for name, arg in listener.calls if name == "flush"]
    assert flushes[1] == PROBE_BUDGET_MS  # r1: a probe, not the whole budget
    assert len(flushes) == 3  # r2: closed again, a normal flush
    events_seen = [e["event"] for e in log if e["event"].startswith("breaker.")]
    assert events_seen == ["breaker.open", "breaker.probe", "breaker.closed"]
    assert listener.published[-1]["breaker"] == {"state": "closed"}


def test_periodic_flushes_only_when_the_interval_has_passed() -> None:
    clock = [NOW]
    api = ScriptedApi(_invoke("r1"), _invoke("r2"), _SHUTDOWN)
    listener = RecordingListener()
    _run(api, listener, flush="periodic:60000", clock=clock)
    assert listener.names() == ["on_invoke", "invocation_done", "on_invoke",
                                "invocation_done", "shutdown"]


def test_shutdown_strategy_never_waits_or_flushes_during_invocations() -> None:
    listener = RecordingListener()
    _run(ScriptedApi(_invoke("r1"), _SHUTDOWN), listener, flush="shutdown")
    assert listener.names() == ["on_invoke", "invocation_done", "shutdown"]


def test_unknown_events_and_fields_are_logged_and_ignored() -> None:
    listener = RecordingListener()
    api = ScriptedApi({"eventType": "RESTORE"}, _invoke("r1", newField=1),
                      {**_SHUTDOWN, "shutdownReason": "quantum"})
    code, log = _run(api, listener)
    assert code == 0
    assert listener.names()[-1] == "shutdown"
    assert listener.calls[-1][1].reason == "quantum"
    assert [e["event_type"] for e in log if e["event"] == "lifecycle.unknown_event"] == [
        "RESTORE"]
    notes = " ".join(e["note"] for e in log if e["event"] == "lifecycle.event_note")
    assert "newField" in notes
    assert "quantum" in notes


@pytest.mark.parametrize("step", ["on_invoke", "handler_done", "flush", "invocation_done"])
def test_a_listener_failure_during_invoke_is_logged_and_the_loop_carries_on(step: str) -> None:
    listener = RecordingListener(fail_on={step})
    code, log = _run(ScriptedApi(_invoke("r1"), _invoke("r2"), _SHUTDOWN), listener)
    assert code == 0
    assert listener.names().count("on_invoke") == 2
    assert listener.names()[-1] == "shutdown"
    failures = [e for e in log if e["event"] == "lifecycle.listener_failed"]
    assert len(failures) == 2
    assert all(f"{step} broke" in e["error"] for e in failures)


def test_an_on_invoke_failure_still_waits_and_flushes() -> None:
    listener = RecordingListener(fail_on={"on_invoke"})
    _run(ScriptedApi(_invoke("r1"), _SHUTDOWN), listener)
    assert listener.names() == ["on_invoke", "handler_done", "flush", "invocation_done",
                                "shutdown"]


def test_a_failed_shutdown_is_reported_as_an_exit_error() -> None:
    api = ScriptedApi(_SHUTDOWN)
    code, _ = _run(api, RecordingListener(fail_on={"shutdown"}))
    assert code == 1
    assert [t for t, _ in api.exit_errors] == ["Extension.RuntimeError"]


def test_a_lost_extensions_api_drains_within_the_external_budget() -> None:
    listener = RecordingListener()
    code, _ = _run(ScriptedApi(LambdaApiError("gone")), listener)
    assert code == 0
    assert listener.calls == [("shutdown", ShutdownEvent("next_failed", NOW + 1_500))]


def test_an_unexpected_error_spills_through_shutdown_then_reports_an_exit_error() -> None:
    api = ScriptedApi(_invoke("r1"), ValueError("bug"))
    listener = RecordingListener()
    code, log = _run(api, listener)
    assert code == 1
    assert listener.names()[-1] == "shutdown"
    assert listener.calls[-1][1].reason == "error"
    assert [t for t, _ in api.exit_errors] == ["Extension.RuntimeError"]
    assert "bug" in api.exit_errors[0][1]
    assert [e["event"] for e in log if e["level"] == "ERROR"] == ["lifecycle.crashed"]


def test_a_delivery_that_stopped_for_good_releases_everything_and_asks_for_a_new_environment(
) -> None:
    api = ScriptedApi(_invoke("r1"), _invoke("r2"))
    listener = RecordingListener(observed=Observed(stopped="OverflowError: pump bug"))
    code, log = _run(api, listener)
    assert code == 1
    assert listener.names() == ["on_invoke", "handler_done", "flush", "invocation_done",
                                "shutdown"]
    assert listener.calls[-1][1].reason == "delivery_stopped"
    assert [t for t, _ in api.exit_errors] == ["Extension.RuntimeError"]
    assert "OverflowError: pump bug" in api.exit_errors[0][1]
    assert "lifecycle.delivery_stopped" in [e["event"] for e in log]


def test_a_missing_deadline_falls_back_to_the_flush_budget() -> None:
    listener = RecordingListener()
    _run(ScriptedApi(_invoke("r1", deadline_ms=None), _SHUTDOWN), listener)
    assert listener.calls[2] == ("flush", 10_000 - 50)  # the default budget minus the margin


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_invoke("r1", invokedFunctionArn="arn:x"), InvokeEvent("r1", NOW + 3_000, "arn:x")),
        (_invoke("r1", deadline_ms=None), InvokeEvent("r1", None)),
        ({**_invoke("r1"), "deadlineMs": "soon"}, InvokeEvent("r1", None)),
        ({**_invoke("r1"), "deadlineMs": True}, InvokeEvent("r1", None)),
        ({"eventType": "INVOKE"}, InvokeEvent("", None)),
        ({"eventType": "SHUTDOWN", "shutdownReason": "TIMEOUT", "deadlineMs": 5.5},
         ShutdownEvent("timeout", 5)),
        ({"eventType": "SHUTDOWN"}, ShutdownEvent("unknown", None)),
        ({"eventType": 7}, UnknownEvent("7")),
        ([1, 2], UnknownEvent("list")),
    ],
)
def test_events_are_parsed_liberally_into_typed_values(raw: object, expected: object) -> None:
    assert parse_event(raw).event == expected
