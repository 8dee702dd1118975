"""Lambda modes, piece by piece: detection and the one decision, registration, Telemetry
(schema, request ends, restores), the handoff token, per-request accounting, SnapStart's
restore and the SHUTDOWN-only loop."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_relay.aws_lambda import INVOKE, SHUTDOWN, mode_hint, ready_before_assembly
from kafka_relay.client import RelayClient
from kafka_relay.config import Config, LambdaMode, load_config
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.errors import LambdaApiError
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.background_loop import BackgroundLoop
from kafka_relay.lifecycle.events import ShutdownEvent
from kafka_relay.lifecycle.listener import ShutdownSummary
from kafka_relay.lifecycle.register import RegisterFailed, register_for_mode
from kafka_relay.lifecycle.telemetry import TelemetryReceiver, subscribe
from kafka_relay.modes.accounting import AccountedSignals, RequestAccounting
from kafka_relay.modes.managed_instances import ManagedInstances
from kafka_relay.modes.mode import Mode, decide, mode_for
from kafka_relay.modes.on_demand import OnDemand
from kafka_relay.modes.snap_start import REFUSAL, SnapStart
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import TOKEN_SOURCES, handoff_token
from kafka_relay.record import Record
from tests.unit.engine_fakes import Rig

# -- detection and configuration -----------------------------------------------------------


@pytest.mark.parametrize(("value", "mode"), [
    ("lambda-managed-instances", LambdaMode.MANAGED_INSTANCES),
    ("managed-instances", LambdaMode.MANAGED_INSTANCES),
    (" Snap-Start ", LambdaMode.SNAP_START),
    ("on-demand", LambdaMode.ON_DEMAND),
    ("provisioned-concurrency", LambdaMode.ON_DEMAND),
    ("", LambdaMode.ON_DEMAND),
])
def test_the_mode_hint_comes_from_the_initialization_type(value: str, mode: LambdaMode) -> None:
    assert mode_hint({"AWS_LAMBDA_INITIALIZATION_TYPE": value}) == mode.value
    assert mode_hint({}) == LambdaMode.ON_DEMAND.value


_CONTAINER = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds",
              "AWS_CONTAINER_AUTHORIZATION_TOKEN": "token"}


@pytest.mark.parametrize(("env", "mode"), [
    (_CONTAINER, LambdaMode.SNAP_START),  # the initialization type hidden from the extension
    ({**_CONTAINER, "AWS_LAMBDA_INITIALIZATION_TYPE": "unheard-of"}, LambdaMode.SNAP_START),
    ({**_CONTAINER, "AWS_ACCESS_KEY_ID": "ASIA1"}, LambdaMode.ON_DEMAND),  # static keys
    ({**_CONTAINER, "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}, LambdaMode.ON_DEMAND),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://x"}, LambdaMode.ON_DEMAND),  # no token
])
def test_snap_start_is_told_by_container_credentials_when_the_type_is_hidden(
        env: dict[str, str], mode: LambdaMode) -> None:
    assert mode_hint(env) == mode.value


def _config(**env: str) -> Config:
    return load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", **env})


@given(events=st.lists(st.sampled_from([INVOKE, SHUTDOWN, "OTHER"]), unique=True),
       init_type=st.sampled_from(["", "on-demand", "snap-start", "lambda-managed-instances"]))
def test_the_registrations_answer_decides_before_the_environment(
        events: list[str], init_type: str) -> None:
    config = _config(AWS_LAMBDA_INITIALIZATION_TYPE=init_type)
    mode = decide(events, config)
    if INVOKE not in events:
        assert mode is LambdaMode.MANAGED_INSTANCES
    elif init_type == "snap-start":
        assert mode is LambdaMode.SNAP_START
    else:
        assert mode is LambdaMode.ON_DEMAND
    assert mode_for(events, config).name is mode


@pytest.mark.parametrize("mode", ["lambda-managed-instances", "snap-start", ""])
def test_the_configuration_ignores_the_variables_lambda_gives_only_to_the_runtime(
    mode: str,
) -> None:
    # AWS_EXECUTION_ENV and AWS_LAMBDA_MAX_CONCURRENCY reach the runtime, not extensions.
    base = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "AWS_LAMBDA_INITIALIZATION_TYPE": mode}
    runtime_only = {"AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
                    "AWS_LAMBDA_MAX_CONCURRENCY": "8"}

    assert load_config({**base, **runtime_only}) == load_config(base)


def test_under_snap_start_the_token_is_the_container_credentials_token() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-token"}
    assert load_config(env).token == "container-token"
    assert load_config({**env, "AWS_SESSION_TOKEN": "session"}).token == "session"
    assert load_config({**env, "KAFKA_RELAY_TOKEN": "mine"}).token == "mine"


@given(st.fixed_dictionaries({}, optional=dict.fromkeys(
    TOKEN_SOURCES, st.sampled_from(["", " ", "a", " b ", "c-token"]))))
def test_client_and_extension_resolve_the_same_token_from_one_environment(
        env: dict[str, str]) -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", **env})
    client = RelayClient(env=env)
    assert client._transport._token == config.token == handoff_token(env)


# -- registration and Telemetry --------------------------------------------------------------


class FakeApi:
    def __init__(self, *, refuse_schema: str | None = None) -> None:
        self.refuse_schema = refuse_schema
        self.schemas: list[str] = []

    def subscribe_telemetry(self, uri: str, *, types: list[str], schema: str = "") -> None:
        self.schemas.append(schema)
        if schema == self.refuse_schema:
            raise LambdaApiError(f"telemetry subscribe answered 400: {schema}")


class FakeRegister:
    """Stands in for the socket POST: refuses INVOKE with ``refuse_invoke`` as errorType."""

    def __init__(self, refuse_invoke: str | None = None) -> None:
        self.refuse_invoke = refuse_invoke
        self.registrations: list[list[str]] = []

    def __call__(self, address: str, name: str, events: list[str]) -> str:
        self.registrations.append(events)
        if "INVOKE" in events and self.refuse_invoke is not None:
            raise RegisterFailed(f"register for {events} answered 'HTTP/1.1 403 Forbidden': "
                                 f'{{"errorType":"{self.refuse_invoke}"}}')
        return "ext-1"


def _logger() -> tuple[JsonLogger, io.StringIO]:
    stream = io.StringIO()
    return JsonLogger(stream=stream), stream


def _events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, stream.getvalue().splitlines()) if e["event"] == name]


def test_managed_instances_register_for_shutdown_only() -> None:
    post = FakeRegister(refuse_invoke="Extension.InvalidEventType")
    done = register_for_mode("x:1", "kafka-relay",
                             {"AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances"},
                             post=post)
    assert (done.events, done.refused) == (["SHUTDOWN"], None)
    assert post.registrations == [["SHUTDOWN"]]


def test_an_invoke_registration_refused_as_invalid_falls_back_to_shutdown_only() -> None:
    post = FakeRegister(refuse_invoke="Extension.InvalidEventType")
    done = register_for_mode("x:1", "kafka-relay", {}, post=post)
    assert done.events == ["SHUTDOWN"]
    assert done.refused is not None
    assert "InvalidEventType" in done.refused
    assert post.registrations == [["INVOKE", "SHUTDOWN"], ["SHUTDOWN"]]


def test_another_registration_refusal_is_not_papered_over() -> None:
    post = FakeRegister(refuse_invoke="Extension.AlreadyRegistered")
    with pytest.raises(RegisterFailed):
        register_for_mode("x:1", "kafka-relay",
                          {"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}, post=post)
    assert post.registrations == [["INVOKE", "SHUTDOWN"]]


@pytest.mark.parametrize(("mode", "first"), [(LambdaMode.MANAGED_INSTANCES, "2025-01-29"),
                                             (LambdaMode.ON_DEMAND, "2022-12-13"),
                                             (LambdaMode.SNAP_START, "2022-12-13")])
def test_telemetry_is_subscribed_with_the_modes_schema_and_the_other_when_refused(
        mode: LambdaMode, first: str) -> None:
    (logger, _) = _logger()
    plain = FakeApi()
    assert subscribe(plain, "http://x:1/", types=["platform"], mode=mode, logger=logger) == first
    refusing = FakeApi(refuse_schema=first)
    other = subscribe(refusing, "http://x:1/", types=["platform"], mode=mode, logger=logger)
    assert refusing.schemas == [first, other]
    assert other != first
    with pytest.raises(LambdaApiError):
        subscribe(FakeApiRefusingAll(), "http://x:1/", types=["platform"], mode=mode,
                  logger=logger)


class FakeApiRefusingAll(FakeApi):
    def subscribe_telemetry(self, uri: str, *, types: list[str], schema: str = "") -> None:
        raise LambdaApiError(f"telemetry subscribe answered 400: {schema}")


# -- per-request accounting ----------------------------------------------------------------


def _records(rig: Rig, request_id: str | None, count: int) -> list[Record]:
    records = rig.records(count)
    for record in records:
        record.request_id = request_id
    return records


def test_each_request_is_reported_once_it_ended_and_its_records_settled(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    accounting = RequestAccounting(rig.engine, monotonic=rig.clock.monotonic)
    signals = AccountedSignals(HandlerSignals(), accounting)
    accounting.accept(_records(rig, "a", 2))
    accounting.accept(_records(rig, "b", 1))
    accounting.accept(_records(rig, None, 3))  # no request id: counted globally only

    signals.mark_done("a")
    assert accounting.due() == []  # ended, but its records are still pending
    rig.step(2)
    assert accounting.due() == [{"request_id": "a", "accepted": 2, "delivered": 2,
                                 "dead_lettered": 0, "spilled": 0, "pending": 0,
                                 "ended": True}]
    signals.mark_done("a")  # the other signal (runtimeDone) of a request already reported
    assert accounting.due() == []
    assert accounting.open_requests() == 1  # b: delivered, but not ended
    assert rig.counts()["delivered"] == 6
    # Nobody waits for ends here: a Telemetry batch is read as it comes, closing b.
    signals.mark_later(lambda: signals.mark_done("b"))
    assert [(r["request_id"], r["ended"]) for r in accounting.due()] == [("b", True)]
    assert accounting.due(final=True) == []


def test_a_request_whose_records_stay_pending_is_reported_after_the_settle_wait(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    accounting = RequestAccounting(rig.engine, monotonic=rig.clock.monotonic, settle_wait_s=30)
    rig.producer.hold = True  # a stalled broker: no reports
    accounting.accept(_records(rig, "slow", 4))
    rig.step()
    accounting.ended("slow")
    rig.clock.advance(29_000)
    assert accounting.due() == []
    rig.clock.advance(1_000)
    (report,) = accounting.due()
    assert (report["accepted"], report["delivered"], report["pending"]) == (4, 0, 4)


def test_a_request_that_never_ends_is_reported_once_stale(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    accounting = RequestAccounting(rig.engine, monotonic=rig.clock.monotonic, stale_after_s=960)
    watch = accounting.accept(_records(rig, "lost", 1), watch=True)
    assert watch is not None  # the caller asked to wait: it gets the watch
    rig.step()
    rig.clock.advance(959_000)
    assert accounting.due() == []
    rig.clock.advance(1_000)
    assert [(r["request_id"], r["ended"]) for r in accounting.due()] == [("lost", False)]


def test_accounting_counts_right_under_concurrent_clients(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    accounting = RequestAccounting(rig.engine, monotonic=rig.clock.monotonic)

    def client(n: int) -> None:
        for batch in range(10):
            accounting.accept(_records(rig, f"req{n}", 3 + batch % 2))
        accounting.ended(f"req{n}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    rig.step(5)
    reports = accounting.due()
    assert sorted(r["request_id"] for r in reports) == [f"req{n}" for n in range(8)]
    assert {(r["accepted"], r["delivered"]) for r in reports} == {(35, 35)}
    rig.assert_accounted()


# -- modes built as production builds them, restores, Telemetry ------------------------------


def _built(rig: Rig, events: tuple[str, ...] = (INVOKE, SHUTDOWN), *,
           hint: LambdaMode = LambdaMode.ON_DEMAND,
           factory: Any = None) -> tuple[Mode, DeliveryEngine]:
    """The mode ``mode_for`` decides, on an engine deferred as that mode asks (app.assemble)."""
    # Its own journal directory: the rig's engine holds the rig's (one extension per journal).
    config = rig.config._replace(mode_hint=hint, init_probe_ms=0,
                                 journal_dir=rig.config.journal_dir.with_name("journal-of-mode"))
    kind = mode_for(events, config)
    engine = DeliveryEngine(config, producer_factory=factory or rig._build, spill=rig.spill,
                            logger=rig.logger, wall_ms=rig.clock.wall_ms,
                            monotonic=rig.clock.monotonic, defer_producer=kind.defers_producer)
    return kind(config, engine, rig.logger), engine


def test_snap_start_refuses_records_and_builds_no_producer_until_the_restore(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.producers.clear()  # the rig's own engine built one; this test's engine must not
    mode, engine = _built(rig, hint=LambdaMode.SNAP_START)
    assert isinstance(mode, SnapStart)
    mode.restore_wait_s = 0
    init_prefix = mode.ids.prefix
    try:
        assert rig.producers == []
        assert mode.admit() == REFUSAL
        assert engine.gauge().counts["producers_built"] == 0

        mode.restore("telemetry")
        mode.restore("invoke")  # the first INVOKE after restoreStart: nothing more

        assert mode.admit() is None
        assert len(rig.producers) == 1
        assert mode.ids.prefix != init_prefix
        assert mode.ids.next().startswith(mode.ids.prefix + "-")
        (restored,) = rig.events("snapstart.restored")
        assert restored["trigger"] == "telemetry"
        assert (restored["id_prefix"], restored["init_id_prefix"]) == (mode.ids.prefix,
                                                                       init_prefix)
    finally:
        engine.stop()


def test_a_failed_restore_keeps_refusing_and_the_next_signal_retries(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    failures = [RuntimeError("secret not readable")]

    def factory() -> Any:
        if failures:
            raise failures.pop()
        return rig._build()

    mode, engine = _built(rig, hint=LambdaMode.SNAP_START, factory=factory)
    assert isinstance(mode, SnapStart)
    mode.restore_wait_s = 0
    try:
        mode.restore("telemetry")
        assert mode.admit() == REFUSAL
        assert len(rig.events("snapstart.restore_failed")) == 1
        mode.restore("invoke")
        assert mode.admit() is None
        (restored,) = rig.events("snapstart.restored")
        assert restored["trigger"] == "invoke"
        mode.port.accept(rig.records(2))
        engine.flush(5.0)  # the pump thread runs on the producer the retry built
        gauge = engine.gauge()
        assert (gauge.failure, gauge.counts["delivered"], len(rig.producers)) == (None, 2, 2)
    finally:
        engine.stop()


def test_a_request_racing_the_restore_signal_waits_for_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    mode, engine = _built(rig, hint=LambdaMode.SNAP_START)
    assert isinstance(mode, SnapStart)
    mode.restore_wait_s = 30
    answers: list[str | None] = []
    waiter = threading.Thread(target=lambda: answers.append(mode.admit()))
    try:
        waiter.start()
        mode.restore("telemetry")
        waiter.join(timeout=30)
        assert answers == [None]
    finally:
        engine.stop()


@pytest.mark.parametrize(("events", "kind"), [((INVOKE, SHUTDOWN), OnDemand),
                                              ((SHUTDOWN,), ManagedInstances)])
def test_a_restore_in_a_mode_that_built_its_producer_reseeds_ids_and_rebuilds_it(
        tmp_path: Path, events: tuple[str, ...], kind: type) -> None:
    rig = Rig(tmp_path)
    rig.producers.clear()
    mode, engine = _built(rig, events)
    assert isinstance(mode, kind)
    before = mode.ids.prefix
    engine.accept(_records(rig, "r1", 2))
    engine.pump.step()
    assert len(rig.producers) == 1

    mode.restore("telemetry")
    engine.pump.step()  # the pump rebuilds before its next batch

    assert mode.ids.prefix != before
    assert len(rig.producers) == 2
    assert engine.gauge().counts["producers_built"] == 2
    (reseeded,) = rig.events("restore.reseeded")
    assert (reseeded["previous_id_prefix"], reseeded["id_prefix"]) == (before, mode.ids.prefix)
    engine.accept(_records(rig, "r2", 1))
    engine.pump.step()
    gauge = engine.gauge()
    assert (gauge.counts["accepted"], gauge.counts["delivered"], gauge.pending) == (3, 3, 0)
    assert len(rig.producers[1].sent) == 1  # the new producer delivers r2


def _telemetry(*events: tuple[str, dict[str, Any]]) -> bytes:
    return json.dumps([{"time": "2025-01-29T00:00:00.000Z", "type": kind, "record": record}
                       for kind, record in events]).encode()


def test_managed_instances_close_a_request_on_platform_report_without_the_end_call(
        tmp_path: Path) -> None:
    """What AWS's Managed Instances platform sends per request: platform.start, then
    platform.report (requestId, status) - never an invoke platform.runtimeDone."""
    rig = Rig(tmp_path)
    mode, engine = _built(rig, (SHUTDOWN,))
    assert isinstance(mode, ManagedInstances)
    receiver = TelemetryReceiver(lambda request_id, _status: mode.signals.mark_done(request_id),
                                 hosts=("127.0.0.1",))
    receiver.start()
    try:
        mode.port.accept(_records(rig, "req-a", 3))
        engine.pump.step()
        engine.pump.step()
        receiver.receive(_telemetry(("platform.start", {"requestId": "req-a",
                                                        "version": "$LATEST"})))
        assert mode.accounting.due() == []  # started, not over
        receiver.receive(_telemetry(("platform.report", {
            "requestId": "req-a", "status": "success", "metrics": {"durationMs": 12.5}})))
        assert mode.accounting.due() == [{"request_id": "req-a", "accepted": 3, "delivered": 3,
                                          "dead_lettered": 0, "spilled": 0, "pending": 0,
                                          "ended": True}]
    finally:
        receiver.stop()
        engine.stop()


def test_the_receiver_tells_request_ends_and_restores_and_ignores_the_rest() -> None:
    ended: list[tuple[str, str]] = []
    restores: list[int] = []
    receiver = TelemetryReceiver(lambda request_id, status: ended.append((request_id, status)),
                                 on_restore=lambda: restores.append(1), hosts=("127.0.0.1",))
    receiver.start()
    try:
        receiver.receive(_telemetry(
            ("platform.initStart", {"initializationType": "snap-start"}),
            ("platform.restoreStart", {}),
            ("platform.start", {"requestId": "a"}),
            ("platform.runtimeDone", {"requestId": "a", "status": "success"}),
            ("platform.report", {"requestId": "a", "status": "success"}),
            ("platform.report", {"status": "timeout"}),  # no request id: nothing to close
            ("platform.initRuntimeDone", {"status": "success"})))
        receiver.receive(b"not json")
    finally:
        receiver.stop()
    assert ended == [("a", "success"), ("a", "success")]
    assert restores == [1]


# -- the SHUTDOWN-only loop ------------------------------------------------------------------


class ScriptedApi:
    """Answers event/next from a script once the loop has ticked twice."""

    def __init__(self, script: list[dict[str, Any] | Exception], *, loop_ticks: Any) -> None:
        self.script = script
        self.loop_ticks = loop_ticks
        self.errors: list[str] = []

    def next_event(self) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while self.loop_ticks() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def exit_error(self, error_type: str, message: str) -> None:
        self.errors.append(error_type)


class TickingListener:
    def __init__(self) -> None:
        self.ticks = 0
        self.shutdowns: list[ShutdownEvent] = []

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("one bad tick")

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        self.shutdowns.append(event)
        return ShutdownSummary(drained=0, spilled=0, pending=0, unaccounted=0)


def _loop(script: list[dict[str, Any] | Exception]) -> tuple[
        BackgroundLoop, TickingListener, ScriptedApi, io.StringIO]:
    listener, (logger, stream) = TickingListener(), _logger()
    holder: list[BackgroundLoop] = []
    api = ScriptedApi(script, loop_ticks=lambda: holder[0].ticks if holder else 0)
    loop = BackgroundLoop(listener, logger, api=api, tick_s=0.01, wall_ms=lambda: 1_000)
    holder.append(loop)
    return loop, listener, api, stream


def test_the_background_loop_ticks_ignores_invoke_and_drains_at_shutdown() -> None:
    loop, listener, api, stream = _loop([
        {"eventType": "INVOKE", "requestId": "r1", "deadlineMs": 5},
        {"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": 3_000}])

    assert loop.run() == 0

    assert listener.ticks >= 2  # the failing first tick did not stop the ticker
    assert len(_events(stream, "lifecycle.tick_failed")) == 1
    assert len(_events(stream, "lifecycle.invoke_ignored")) == 1
    assert listener.shutdowns == [ShutdownEvent("spindown", 3_000)]
    assert api.errors == []


def test_a_lost_extensions_api_still_drains_within_a_deadline() -> None:
    loop, listener, api, _ = _loop([LambdaApiError("connection refused")])

    assert loop.run() == 0

    assert listener.shutdowns == [ShutdownEvent("next_failed", 2_500)]
    assert api.errors == []  # the API is gone: a drain, not an exit error


@pytest.mark.parametrize(("kind", "events", "early"), [
    ("on-demand", [INVOKE, SHUTDOWN], True),
    (" On-Demand ", [INVOKE, SHUTDOWN], True),
    ("on-demand", [SHUTDOWN], False),  # INVOKE refused: managed instances after all
    ("provisioned-concurrency", [INVOKE, SHUTDOWN], False),
    ("snap-start", [INVOKE, SHUTDOWN], False),
    ("lambda-managed-instances", [SHUTDOWN], False),
    ("", [INVOKE, SHUTDOWN], False),
    ("something-new", [INVOKE, SHUTDOWN], False),
])
def test_only_on_demand_with_invoke_sends_next_before_assembling(
        kind: str, events: list[str], early: bool) -> None:
    """Provisioned concurrency, SnapStart, managed instances and an unknown (or hidden)
    initialization type assemble everything before /next."""
    assert ready_before_assembly({"AWS_LAMBDA_INITIALIZATION_TYPE": kind}, events) is early
