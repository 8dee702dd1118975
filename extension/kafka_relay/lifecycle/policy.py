"""The flush policy: a pure function of (strategy, state, what the engine reports, clock, moment).

``auto``      (the default) wait for the handler and flush before /next while the environment
              is new or invocations are sparse; once they come often enough, call /next
              without waiting for acknowledgements (the loop still waits for a handler end
              the client tells) and let the next invocation carry the records out — only
              while the next INVOKE is predicted well within ``max_latency_ms`` and the
              oldest pending record plus that prediction stays within it;
``end``       wait for the handler, flush before calling /next;
``periodic``  the same, but only when the last flush is older than the interval —
              otherwise call /next at once and pay nothing after the handler;
``shutdown``  never before /next; everything is drained at SHUTDOWN.

Whatever the strategy, an open circuit breaker (the broker did not answer) skips the wait
and the flush except for a short probe now and then, and while it catches up after an outage
a flush is capped at ``CATCH_UP_BUDGET_MS`` (``breaker.py``).

Records are produced in the background as they arrive (or, behind a batch in flight, once its
reports came: ``delivery/pump.py``) whatever is decided here: deferring only means not waiting
for their acknowledgements before /next.
"""

from enum import Enum
from typing import NamedTuple

from kafka_relay.config import FlushMode, FlushStrategy
from kafka_relay.lifecycle.breaker import CATCH_UP_BUDGET_MS, PROBE_BUDGET_MS, Breaker

# auto: how many invocations an environment must have seen before it may defer (two gaps).
WARMUP_INVOCATIONS = 3
# auto: the predicted gap must be within this share of the bound ("well within").
_GAP_SHARE = 0.5
# The arrival model: smoothed gap and its mean deviation (as TCP estimates a round trip);
# the prediction is gap + 4 x deviation, so irregular arrivals predict long gaps.
_ALPHA = 0.25
_BETA = 0.25
_DEVIATIONS = 4


class Moment(str, Enum):
    INVOKE = "invoke"  # an INVOKE event arrived
    HANDLER_DONE = "handler_done"  # the handler finished (client end call or runtimeDone)
    SHUTDOWN = "shutdown"


class Observed(NamedTuple):
    """What the rest of the extension reports at a decision point (plain data)."""

    pending: int = 0  # unsettled records
    oldest_pending_ms: int = 0  # age of the oldest of them (0: none)
    settled: int = 0  # delivered + dead-lettered so far (grows while the broker answers)
    broker_up: bool = True  # the last delivery succeeded
    stopped: str | None = None  # delivery stopped for good (the pump died): why


class Arrivals(NamedTuple):
    """The INVOKE inter-arrival model of this environment."""

    invocations: int = 0
    last_invoke_ms: int | None = None
    gap_ms: float = 0.0
    gap_dev_ms: float = 0.0

    def arrived(self, now_ms: int) -> "Arrivals":
        if self.last_invoke_ms is None:
            return Arrivals(1, now_ms)
        gap = float(max(0, now_ms - self.last_invoke_ms))
        if self.invocations == 1:
            return Arrivals(2, now_ms, gap, gap / 2)
        dev = (1 - _BETA) * self.gap_dev_ms + _BETA * abs(gap - self.gap_ms)
        smoothed = (1 - _ALPHA) * self.gap_ms + _ALPHA * gap
        return Arrivals(self.invocations + 1, now_ms, smoothed, dev)

    def predicted_gap_ms(self) -> float | None:
        """When the next INVOKE is expected, conservatively; None before two arrivals."""
        if self.invocations < 2:
            return None
        return self.gap_ms + _DEVIATIONS * self.gap_dev_ms


class FlushState(NamedTuple):
    arrivals: Arrivals = Arrivals()
    last_flush_ms: int = 0
    breaker: Breaker = Breaker()

    # Built directly, not with _replace (keyword handling): these run every invocation.
    def arrived(self, now_ms: int) -> "FlushState":
        return FlushState(self.arrivals.arrived(now_ms), self.last_flush_ms, self.breaker)

    def observe(self, observed: Observed) -> "FlushState":
        return FlushState(self.arrivals, self.last_flush_ms,
                          self.breaker.observe(observed.settled, observed.pending))

    def flushed(self, now_ms: int, *, remaining: int, settled_during: int, settled: int,
                probe: bool, budget_ms: int = PROBE_BUDGET_MS) -> "FlushState":
        """After a flush: a flush that settled nothing while records stayed pending opens the
        breaker (or, as a probe, schedules the next one). A flush the invocation's deadline
        cut below a probe's budget proves nothing. One that left nothing pending ends a
        catch-up after an outage."""
        breaker = Breaker() if remaining == 0 and self.breaker.catching_up else self.breaker
        if remaining > 0 and settled_during == 0 and (probe or budget_ms >= PROBE_BUDGET_MS):
            breaker = breaker.probed(now_ms) if probe and breaker.open else (
                breaker if breaker.open else breaker.trip(now_ms, settled))
        return FlushState(self.arrivals, now_ms, breaker)


class Decision(NamedTuple):
    wait_for_handler: bool
    flush: bool
    reason: str
    budget_ms: int | None = None  # a cap below the flush budget (a breaker probe)
    probe: bool = False
    deferred: bool = False  # auto chose not to wait for acknowledgements


def needs_observation(strategy: FlushStrategy, state: FlushState) -> bool:
    """Whether ``decide`` reads ``observed`` (and the breaker needs a look at progress): for
    ``auto``, and for every strategy while the breaker is open or catching up. The others
    decide on the state and the clock alone, so an invocation asks the engine nothing to
    decide."""
    breaker = state.breaker
    return strategy.mode is FlushMode.AUTO or breaker.open or breaker.catching_up


def decide(strategy: FlushStrategy, state: FlushState, observed: Observed, *, now_ms: int,
           moment: Moment, max_latency_ms: int) -> Decision:
    decision = _decide(strategy, state, observed, now_ms=now_ms, moment=moment,
                       max_latency_ms=max_latency_ms)
    if state.breaker.catching_up and moment is not Moment.SHUTDOWN and (
            decision.flush or decision.wait_for_handler):
        return decision._replace(budget_ms=CATCH_UP_BUDGET_MS,
                                 reason=f"{decision.reason}; catching up after an outage")
    return decision


def _decide(strategy: FlushStrategy, state: FlushState, observed: Observed, *, now_ms: int,
            moment: Moment, max_latency_ms: int) -> Decision:
    if moment is Moment.SHUTDOWN:
        return Decision(False, True, "shutdown drains everything")
    if strategy.mode is FlushMode.SHUTDOWN:
        return Decision(False, False, "flush strategy 'shutdown'")
    if state.breaker.open:
        if observed.pending and state.breaker.probe_due(now_ms):
            return Decision(moment is Moment.INVOKE, moment is Moment.HANDLER_DONE,
                            "breaker open: probe", budget_ms=PROBE_BUDGET_MS, probe=True)
        return Decision(False, False, "breaker open: the broker did not answer")
    if strategy.mode is FlushMode.END:
        return Decision(moment is Moment.INVOKE, moment is Moment.HANDLER_DONE, "strategy 'end'")
    if strategy.mode is FlushMode.PERIODIC:
        due = now_ms - state.last_flush_ms >= strategy.interval_ms
        reason = f"last flush {now_ms - state.last_flush_ms} ms ago, interval " \
                 f"{strategy.interval_ms} ms"
        return Decision(due and moment is Moment.INVOKE, due and moment is Moment.HANDLER_DONE,
                        reason)
    return _auto(state.arrivals, observed, moment=moment, max_latency_ms=max_latency_ms)


def _auto(arrivals: Arrivals, observed: Observed, *, moment: Moment,
          max_latency_ms: int) -> Decision:
    flush = Decision(moment is Moment.INVOKE, moment is Moment.HANDLER_DONE, "")
    predicted = arrivals.predicted_gap_ms()
    if arrivals.invocations < WARMUP_INVOCATIONS or predicted is None:
        return flush._replace(reason=f"warming up ({arrivals.invocations} invocations)")
    if not observed.broker_up:
        return flush._replace(reason="no delivery confirmed yet")
    if predicted > _GAP_SHARE * max_latency_ms:
        return flush._replace(reason=f"sparse: next invoke predicted in {predicted:.0f} ms")
    if observed.oldest_pending_ms + predicted > max_latency_ms:
        return flush._replace(reason=f"oldest record {observed.oldest_pending_ms} ms old")
    return Decision(False, False, f"deferred: next invoke predicted in {predicted:.0f} ms",
                    deferred=True)
