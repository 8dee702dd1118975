"""Flush control against a real broker: the circuit breaker when the broker is down, the bounded
wait for a handler nothing signals, and an init probe that stops at a transport error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from devtools.kafka_broker import free_port
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.breaker import CATCH_UP_BUDGET_MS, PROBE_BUDGET_MS
from kafka_relay.lifecycle.listener import FlushReport
from kafka_relay.modes.engine_listener import FIRST_CONTACT_STALL_S, GONE_STALL_S, STALL_S
from tests.conftest import Broker, ProxiedBroker
from tests.relay_harness import Harness, running_relay


def _now_ms() -> int:
    return int(time.time() * 1000)


# Room for a first delivery on a loaded machine: a first flush that misses it opens the breaker.
BUDGET_MS = 2000


def _record_flushes(h: Harness) -> list[int]:
    """Every flush budget the event loop asks the listener for, in order."""
    budgets: list[int] = []
    real = h.parts.mode.listener.flush

    def flush(budget_ms: int) -> FlushReport:
        budgets.append(budget_ms)
        return real(budget_ms)

    h.parts.mode.listener.flush = flush  # type: ignore[method-assign]
    return budgets


def _invoke(h: Harness, request_id: str, records: int, *, end: bool = True) -> list[str]:
    h.client.request_id = request_id
    ids = h.client.send([{"key": request_id, "value": i} for i in range(records)]).ids
    if end:
        h.client.invocation_end()
    h.loop.invoke({"requestId": request_id, "deadlineMs": _now_ms() + 3000})
    return ids


def test_after_a_failed_flush_invocations_skip_the_broker_until_it_answers_again(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic, flush_budget_ms=BUDGET_MS,
                       env_extra={"KAFKA_RELAY_FLUSH": "end"},
                       producer_overrides={"reconnect.backoff.max.ms": "200"}) as h:
        budgets = _record_flushes(h)
        sent = _invoke(h, "before", 5)
        assert budgets == [BUDGET_MS]
        assert h.parts.engine.gauge().counts["delivered"] == 5
        proxy.cut()
        started = time.monotonic()
        sent += _invoke(h, "first-during", 5)  # gives up early, then opens the breaker
        took_s = time.monotonic() - started
        # Refused connections say the broker is gone (not reconnecting): the flush stops
        # after GONE_STALL_S without progress, not after STALL_S.
        (stalled,) = h.log_events("flush.stalled")
        assert stalled["broker_gone"] is True
        assert GONE_STALL_S * 1000 <= stalled["stalled_ms"] < STALL_S * 1000
        assert took_s < STALL_S
        assert len(h.log_events("breaker.open")) == 1
        assert h.client.status()["flush_control"]["breaker"]["state"] == "open"
        flushes_when_opened = len(budgets)
        for n in range(20):
            sent += _invoke(h, f"during-{n}", 5)
        # Later invocations flushed only as short probes; every other one called /next at once.
        later = budgets[flushes_when_opened:]
        assert all(b == PROBE_BUDGET_MS for b in later)
        assert len(later) == len(h.log_events("breaker.probe")) < 20
        assert h.parts.engine.gauge().pending > 0
        proxy.restore()
        for n in range(200):  # the pump delivers in the background; an invocation sees it
            sent += _invoke(h, f"after-{n}", 1)
            if h.log_events("breaker.closed"):
                break
            time.sleep(0.05)
        assert len(h.log_events("breaker.closed")) == 1
        assert h.client.status()["flush_control"]["breaker"]["state"] == "closed"
        flushes_when_closed = len(budgets)
        for n in range(20):  # the outage's backlog leaves in capped flushes, then...
            sent += _invoke(h, f"closed-{n}", 5)
            if budgets[-1] == BUDGET_MS:
                break
        assert budgets[-1] == BUDGET_MS  # ...a normal flush again
        assert set(budgets[flushes_when_closed:-1]) <= {CATCH_UP_BUDGET_MS}
        deadline = time.monotonic() + 30
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)
        counts = h.parts.engine.gauge().counts
        assert counts["delivered"] == len(sent)
        assert h.parts.engine.status()["unaccounted"] == 0
    got = broker.read(topic, expected=len(sent), timeout=20)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)


def test_a_handler_nothing_signals_gets_a_bounded_wait_and_one_warning(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                       env_extra={"KAFKA_RELAY_FLUSH": "end"}) as h:
        budgets = _record_flushes(h)
        sent: list[str] = []
        for n in range(3):  # the invocation deadline is 3 s away; no end call, no telemetry
            sent += _invoke(h, f"unsignalled-{n}", 5, end=False)
        assert len(budgets) == 3  # each still flushed, after the bounded wait
        assert h.parts.engine.gauge().counts["delivered"] == 15
        (warning,) = h.log_events("handler.end_unsignalled")
        assert "relay_handler" in warning["hint"]
        assert "KAFKA_RELAY_TELEMETRY" in warning["hint"]
        assert warning["ended_by"] == "quiet"  # not the 3 s to the invocation's deadline
        # Once an end signal arrives, the extension waits for it again (no early flush).
        sent += _invoke(h, "signalled", 5)
        signals = h.parts.mode.signals
        assert isinstance(signals, HandlerSignals)
        assert signals.seen_any
    got = broker.read(topic, expected=len(sent), timeout=20)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)


def test_an_unreachable_broker_ends_the_init_probe_at_the_transport_error(
    tmp_path: Path
) -> None:
    closed_port = free_port()  # nothing listens: connections are refused
    with running_relay(f"127.0.0.1:{closed_port}", tmp_path, init_probe_ms=10_000) as h:
        (unreachable,) = h.log_events("init.broker_unreachable")
        ready: list[dict[str, Any]] = h.log_events("init.ready")
    assert unreachable["probe_ended_by"] == "transport_error"
    assert ready[0]["broker_state"] == "unknown"


def test_a_flush_to_a_silent_broker_stops_when_nothing_settles_not_at_its_budget(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with running_relay(proxy.address, tmp_path, default_topic=topic, flush_budget_ms=60_000,
                       env_extra={"KAFKA_RELAY_FLUSH": "end"}) as h:
        sent = _invoke(h, "before", 5)
        proxy.pause()  # connections stay open, nothing answers
        h.client.request_id = "silent"
        sent += h.client.send([{"key": "silent", "value": i} for i in range(5)]).ids
        h.client.invocation_end()
        # The invocation deadline is far away; the budget is a minute.
        h.loop.invoke({"requestId": "silent", "deadlineMs": _now_ms() + 120_000})
        (stalled,) = h.log_events("flush.stalled")
        assert stalled["remaining"] == 5
        # The broker delivered before: half a second of silence is enough, not the 3 s a
        # first contact gets.
        assert STALL_S * 1000 <= stalled["stalled_ms"] < FIRST_CONTACT_STALL_S * 1000
        assert stalled["broker_gone"] is False  # open connections that say nothing
        assert len(h.log_events("breaker.open")) == 1
        proxy.resume()
        deadline = time.monotonic() + 30
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)
        assert h.parts.engine.gauge().counts["delivered"] == len(sent)
    got = broker.read(topic, expected=len(sent), timeout=20)
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)
