"""The flush policy is a pure function of strategy, state, what the engine reports, clock and
moment; ``auto`` defers only within the latency bound; the breaker opens, probes and closes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.config import FlushMode, FlushStrategy
from kafka_relay.lifecycle.breaker import (
    CATCH_UP_BUDGET_MS,
    FIRST_PROBE_INTERVAL_MS,
    MAX_PROBE_INTERVAL_MS,
    PROBE_BUDGET_MS,
    Breaker,
)
from kafka_relay.lifecycle.policy import (
    WARMUP_INVOCATIONS,
    Arrivals,
    Decision,
    FlushState,
    Moment,
    Observed,
    decide,
    needs_observation,
)

END = FlushStrategy(FlushMode.END)
SHUTDOWN = FlushStrategy(FlushMode.SHUTDOWN)
PERIODIC = FlushStrategy(FlushMode.PERIODIC, 1000)
AUTO = FlushStrategy(FlushMode.AUTO)
BOUND = 5_000
IDLE = Observed()


def _decide(strategy: FlushStrategy, state: FlushState, moment: Moment,
            observed: Observed = IDLE, now_ms: int = 0) -> Decision:
    return decide(strategy, state, observed, now_ms=now_ms, moment=moment,
                  max_latency_ms=BOUND)


def _state(*invoke_times: int, last_flush_ms: int = 0) -> FlushState:
    state = FlushState(last_flush_ms=last_flush_ms)
    for t in invoke_times:
        state = state.arrived(t)
    return state


def test_end_waits_for_the_handler_then_flushes_every_time() -> None:
    state = _state(0)
    invoke = decide(END, state, IDLE, now_ms=5, moment=Moment.INVOKE, max_latency_ms=BOUND)
    assert invoke.wait_for_handler
    assert not invoke.flush
    assert decide(END, state, IDLE, now_ms=5, moment=Moment.HANDLER_DONE,
                  max_latency_ms=BOUND).flush


def test_periodic_skips_invocations_until_the_interval_has_passed() -> None:
    state = _state(10_500, last_flush_ms=10_000)

    def at(now: int, moment: Moment) -> tuple[bool, bool]:
        d = decide(PERIODIC, state, IDLE, now_ms=now, moment=moment, max_latency_ms=BOUND)
        return d.wait_for_handler, d.flush

    assert at(10_500, Moment.INVOKE) == (False, False)
    assert at(10_999, Moment.HANDLER_DONE) == (False, False)
    assert at(11_000, Moment.INVOKE) == (True, False)
    assert at(11_200, Moment.HANDLER_DONE) == (False, True)


def test_shutdown_strategy_never_holds_an_invocation() -> None:
    for moment in (Moment.INVOKE, Moment.HANDLER_DONE):
        decision = decide(SHUTDOWN, _state(0), IDLE, now_ms=10**9, moment=moment,
                          max_latency_ms=BOUND)
        assert not decision.wait_for_handler
        assert not decision.flush


def test_every_strategy_drains_at_shutdown_even_with_the_breaker_open() -> None:
    opened = _state(0)._replace(breaker=Breaker().trip(0, 0))
    for strategy in (AUTO, END, PERIODIC, SHUTDOWN):
        for state in (_state(0), opened):
            assert decide(strategy, state, IDLE, now_ms=1, moment=Moment.SHUTDOWN,
                          max_latency_ms=BOUND).flush


# -- auto -------------------------------------------------------------------------------


def _auto_invoke(state: FlushState, observed: Observed = IDLE) -> Decision:
    return decide(AUTO, state, observed, now_ms=state.arrivals.last_invoke_ms or 0,
                  moment=Moment.INVOKE, max_latency_ms=BOUND)


def test_auto_flushes_at_invocation_end_while_the_environment_is_new() -> None:
    times = [i * 100 for i in range(WARMUP_INVOCATIONS)]
    for n in range(1, WARMUP_INVOCATIONS):
        decision = _auto_invoke(_state(*times[:n]))
        assert decision.wait_for_handler
        assert not decision.deferred
        assert "warming up" in decision.reason
        assert decide(AUTO, _state(*times[:n]), IDLE, now_ms=times[n - 1],
                      moment=Moment.HANDLER_DONE, max_latency_ms=BOUND).flush


def test_auto_defers_once_invocations_come_often_enough() -> None:
    decision = _auto_invoke(_state(*range(0, 1_000, 100)))
    assert decision.deferred
    assert not decision.wait_for_handler
    assert not decision.flush


def test_auto_keeps_flushing_sparse_invocations() -> None:
    decision = _auto_invoke(_state(*range(0, 200_000, 10_000)))
    assert decision.wait_for_handler
    assert not decision.deferred
    assert "sparse" in decision.reason


def test_auto_flushes_when_the_oldest_record_would_outlive_the_bound() -> None:
    state = _state(*range(0, 1_000, 100))
    assert _auto_invoke(state, Observed(pending=1, oldest_pending_ms=1_000)).deferred
    late = _auto_invoke(state, Observed(pending=1, oldest_pending_ms=BOUND - 10))
    assert late.wait_for_handler
    assert "oldest record" in late.reason


def test_auto_flushes_until_a_delivery_is_confirmed() -> None:
    decision = _auto_invoke(_state(*range(0, 1_000, 100)), Observed(broker_up=False))
    assert decision.wait_for_handler
    assert not decision.deferred


def test_auto_goes_back_to_flushing_after_a_long_gap_then_defers_again() -> None:
    times = [*range(0, 1_000, 100), 61_000]
    assert not _auto_invoke(_state(*times)).deferred  # the gap after a long freeze
    burst = [*times, *range(61_100, 61_100 + 100 * 40, 100)]
    assert _auto_invoke(_state(*burst)).deferred


def test_irregular_arrivals_predict_longer_gaps_than_regular_ones_of_the_same_mean() -> None:
    regular = _state(*range(0, 20_000, 1_000)).arrivals.predicted_gap_ms()
    irregular_times = [0]
    for i in range(19):
        irregular_times.append(irregular_times[-1] + (100 if i % 2 else 1_900))
    irregular = _state(*irregular_times).arrivals.predicted_gap_ms()
    assert regular is not None
    assert irregular is not None
    assert irregular > regular


_GAPS = st.one_of(
    st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=60),
    # steady traffic (the case where deferrals pile up), with some jitter
    st.builds(lambda gap, n, jitter: [gap + (j % 3) * jitter for j in range(n)],
              st.integers(min_value=0, max_value=5_000), st.integers(min_value=5, max_value=60),
              st.integers(min_value=0, max_value=200)),
)


@settings(max_examples=400, deadline=None)
@given(gaps=_GAPS, bound=st.integers(min_value=100, max_value=30_000))
def test_a_deferred_record_is_never_older_than_the_bound_at_the_next_decision_point(
        gaps: list[int], bound: int) -> None:
    """Each invocation hands over a record when it starts; only a flush settles records.
    Whenever auto defers and the next INVOKE comes within the gap it predicted, no pending
    record is older than the bound at that next decision point."""
    state, now = FlushState().arrived(0), 0
    oldest: int | None = None  # accepted time of the oldest pending record
    promise: int | None = None  # the latest next-INVOKE time a deferral relied on
    for gap in [*gaps, 0]:
        if oldest is None:
            oldest = now
        observed = Observed(pending=1, oldest_pending_ms=now - oldest, settled=0)
        if promise is not None and now <= promise:
            assert now - oldest <= bound
        decision = decide(AUTO, state, observed, now_ms=now, moment=Moment.INVOKE,
                          max_latency_ms=bound)
        predicted = state.arrivals.predicted_gap_ms()
        if decision.deferred:
            assert predicted is not None
            assert state.arrivals.invocations >= WARMUP_INVOCATIONS
            assert observed.oldest_pending_ms + predicted <= bound
            promise = now + int(predicted)
        else:
            assert decision.wait_for_handler
            assert decide(AUTO, state, observed, now_ms=now, moment=Moment.HANDLER_DONE,
                          max_latency_ms=bound).flush
            oldest, promise = None, None
        now += gap
        state = state.arrived(now)


@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=40))
def test_the_arrival_model_counts_every_invocation_and_predicts_no_negative_gap(
        deltas: list[int]) -> None:
    arrivals, now = Arrivals(), 0
    for n, delta in enumerate(deltas, start=1):
        now += delta
        arrivals = arrivals.arrived(now)
        assert arrivals.invocations == n
        predicted = arrivals.predicted_gap_ms()
        assert (predicted is None) == (n < 2)
        assert predicted is None or predicted >= 0


# -- the breaker ---------------------------------------------------------------------------


def test_a_flush_that_settles_nothing_opens_the_breaker_and_invocations_stop_waiting() -> None:
    state = _state(0).flushed(100, remaining=5, settled_during=0, settled=7, probe=False)
    assert state.breaker.open
    for strategy in (AUTO, END, PERIODIC):
        decision = decide(strategy, state, Observed(pending=5, settled=7), now_ms=200,
                          moment=Moment.INVOKE, max_latency_ms=BOUND)
        assert not decision.wait_for_handler
        assert not decision.flush


def test_a_flush_that_made_progress_keeps_the_breaker_closed() -> None:
    state = _state(0).flushed(100, remaining=5, settled_during=1, settled=7, probe=False)
    assert not state.breaker.open
    assert not _state(0).flushed(100, remaining=0, settled_during=0, settled=7,
                                 probe=False).breaker.open


def test_a_flush_cut_short_by_the_deadline_does_not_open_the_breaker() -> None:
    state = _state(0).flushed(100, remaining=5, settled_during=0, settled=7, probe=False,
                              budget_ms=PROBE_BUDGET_MS - 1)
    assert not state.breaker.open


def test_the_open_breaker_probes_briefly_with_growing_intervals() -> None:
    state = _state(0).flushed(0, remaining=5, settled_during=0, settled=0, probe=False)
    pending = Observed(pending=5)
    assert not decide(END, state, pending, now_ms=FIRST_PROBE_INTERVAL_MS - 1,
                      moment=Moment.INVOKE, max_latency_ms=BOUND).wait_for_handler
    probe = decide(END, state, pending, now_ms=FIRST_PROBE_INTERVAL_MS, moment=Moment.INVOKE,
                   max_latency_ms=BOUND)
    assert probe.wait_for_handler
    assert probe.probe
    assert probe.budget_ms == PROBE_BUDGET_MS
    assert not decide(END, state, IDLE, now_ms=FIRST_PROBE_INTERVAL_MS,
                      moment=Moment.INVOKE, max_latency_ms=BOUND).probe  # nothing to send
    now, intervals = FIRST_PROBE_INTERVAL_MS, []
    for _ in range(10):
        state = state.flushed(now, remaining=5, settled_during=0, settled=0, probe=True)
        assert state.breaker.open
        intervals.append(state.breaker.next_probe_ms - now)
        now = state.breaker.next_probe_ms
    assert intervals == sorted(intervals)
    assert intervals[0] == FIRST_PROBE_INTERVAL_MS
    assert intervals[-1] == MAX_PROBE_INTERVAL_MS


def test_the_breaker_closes_once_a_record_settles_after_it_opened() -> None:
    state = _state(0).flushed(0, remaining=5, settled_during=0, settled=7, probe=False)
    assert state.observe(Observed(pending=5, settled=7)).breaker.open
    closed = state.observe(Observed(pending=4, settled=8))
    assert not closed.breaker.open
    assert decide(END, closed, IDLE, now_ms=10, moment=Moment.INVOKE,
                  max_latency_ms=BOUND).wait_for_handler


def test_after_an_outage_flushes_are_capped_until_the_backlog_is_delivered() -> None:
    opened = _state(0).flushed(0, remaining=5000, settled_during=0, settled=7, probe=False)
    closed = opened.observe(Observed(pending=4999, settled=8))
    assert not closed.breaker.open
    assert closed.breaker.catching_up
    backlog = Observed(pending=4999, settled=8, oldest_pending_ms=60_000)
    for strategy in (AUTO, END, PERIODIC):
        decision = _decide(strategy, closed, Moment.HANDLER_DONE, backlog, now_ms=5_000)
        assert decision.flush
        assert decision.budget_ms == CATCH_UP_BUDGET_MS
        assert "catching up after an outage" in decision.reason
    # SHUTDOWN drains with its whole deadline; 'shutdown' never flushes before /next.
    assert _decide(END, closed, Moment.SHUTDOWN, backlog).budget_ms is None
    assert not _decide(SHUTDOWN, closed, Moment.HANDLER_DONE, backlog).flush
    # A capped flush that made progress keeps catching up; once nothing is pending, flushes
    # get their whole budget again.
    still = closed.flushed(5_500, remaining=2000, settled_during=2999, settled=3007,
                           probe=False, budget_ms=CATCH_UP_BUDGET_MS)
    assert still.breaker.catching_up
    assert not still.breaker.open
    caught_up = still.observe(Observed(pending=0, settled=5007))
    assert not caught_up.breaker.catching_up
    assert _decide(END, caught_up, Moment.HANDLER_DONE, IDLE).budget_ms is None
    # The next invocation's records may already be pending when it is seen: a flush that
    # leaves nothing pending ends the catch-up too.
    flushed_all = still.flushed(6_000, remaining=0, settled_during=2000, settled=5007,
                                probe=False, budget_ms=CATCH_UP_BUDGET_MS)
    assert not flushed_all.breaker.catching_up


def test_a_breaker_that_closes_with_nothing_pending_has_nothing_to_catch_up() -> None:
    opened = _state(0).flushed(0, remaining=5, settled_during=0, settled=7, probe=False)
    closed = opened.observe(Observed(pending=0, settled=12))
    assert not closed.breaker.open
    assert not closed.breaker.catching_up


_OBSERVED = st.builds(Observed, pending=st.integers(0, 10_000),
                      oldest_pending_ms=st.integers(0, 100_000),
                      settled=st.integers(0, 10_000), broker_up=st.booleans())
_BREAKERS = st.one_of(st.just(Breaker()), st.just(Breaker(catching_up=True)),
                      st.builds(Breaker().trip, st.integers(0, 10**6), st.integers(0, 100)))


@given(strategy=st.sampled_from([END, SHUTDOWN, PERIODIC, AUTO]),
       invokes=st.lists(st.integers(0, 10**6), max_size=6), breaker=_BREAKERS,
       last_flush_ms=st.integers(0, 10**6), observed=_OBSERVED, now_ms=st.integers(0, 10**6),
       moment=st.sampled_from([Moment.INVOKE, Moment.HANDLER_DONE]))
def test_a_decision_said_not_to_need_the_engines_report_does_not_depend_on_it(
        *, strategy: FlushStrategy, invokes: list[int], breaker: Breaker, last_flush_ms: int,
        observed: Observed, now_ms: int, moment: Moment) -> None:
    """The loop asks the engine nothing before deciding when ``needs_observation`` says so:
    whatever the engine would have reported, the decision is the same."""
    state = _state(*sorted(invokes), last_flush_ms=last_flush_ms)._replace(breaker=breaker)
    if needs_observation(strategy, state):
        assert strategy.mode is FlushMode.AUTO or breaker.open or breaker.catching_up
        return
    assert _decide(strategy, state, moment, observed, now_ms) == \
        _decide(strategy, state, moment, IDLE, now_ms)
    assert state.observe(observed) == state  # nor would the breaker have changed
