"""The flush policy is a pure function of strategy, last flush, clock and moment."""

from __future__ import annotations

from kafka_relay.config import FlushMode, FlushStrategy
from kafka_relay.lifecycle.policy import Moment, decide

END = FlushStrategy(FlushMode.END)
SHUTDOWN = FlushStrategy(FlushMode.SHUTDOWN)
PERIODIC = FlushStrategy(FlushMode.PERIODIC, 1000)


def test_end_waits_for_the_handler_then_flushes_every_time() -> None:
    assert decide(END, last_flush_ms=0, now_ms=5, moment=Moment.INVOKE).wait_for_handler
    assert not decide(END, last_flush_ms=0, now_ms=5, moment=Moment.INVOKE).flush
    assert decide(END, last_flush_ms=4, now_ms=5, moment=Moment.HANDLER_DONE).flush


def test_periodic_skips_invocations_until_the_interval_has_passed() -> None:
    early = decide(PERIODIC, last_flush_ms=10_000, now_ms=10_500, moment=Moment.INVOKE)
    assert not early.wait_for_handler
    assert not decide(PERIODIC, last_flush_ms=10_000, now_ms=10_999,
                      moment=Moment.HANDLER_DONE).flush
    due = decide(PERIODIC, last_flush_ms=10_000, now_ms=11_000, moment=Moment.INVOKE)
    assert due.wait_for_handler
    assert decide(PERIODIC, last_flush_ms=10_000, now_ms=11_200,
                  moment=Moment.HANDLER_DONE).flush


def test_shutdown_strategy_never_holds_an_invocation() -> None:
    for moment in (Moment.INVOKE, Moment.HANDLER_DONE):
        decision = decide(SHUTDOWN, last_flush_ms=0, now_ms=10**9, moment=moment)
        assert not decision.wait_for_handler
        assert not decision.flush


def test_every_strategy_drains_at_shutdown() -> None:
    for strategy in (END, PERIODIC, SHUTDOWN):
        assert decide(strategy, last_flush_ms=0, now_ms=1, moment=Moment.SHUTDOWN).flush
