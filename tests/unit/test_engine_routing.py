"""routing.route: the boundaries of each rule by example, and the rules themselves as
properties over every (error kind, code, attempts, budget, DLQ path)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from kafka_relay.delivery.routing import BACKOFF_CAP_MS, Action, Decision, backoff_ms, route
from kafka_relay.producer.classify import ErrorKind, classify, is_connect_failure

MAX = 3
OVERSIZE = KafkaError.MSG_SIZE_TOO_LARGE
HOPELESS = (ErrorKind.PERMANENT, ErrorKind.POISON)
GIVE_UP = {Action.DEAD_LETTER, Action.SPILL, Action.SPILL_OVERSIZE}


def _route(kind: ErrorKind, *, code: int | None = None, attempts: int = 1,
           max_attempts: int = MAX, to_dlq: bool = False, base_ms: int = 100) -> Decision:
    return route(kind, code=code, reason="E", attempts=attempts, max_attempts=max_attempts,
                 to_dlq=to_dlq, backoff_base_ms=base_ms)


# -- boundaries ---------------------------------------------------------------------------


def test_a_transient_error_is_retried_until_the_last_attempt_then_dead_lettered() -> None:
    assert _route(ErrorKind.TRANSIENT, attempts=MAX - 1) == Decision(
        Action.RETRY, backoff_ms(MAX - 1, 100), "E")
    assert _route(ErrorKind.TRANSIENT, attempts=MAX) == Decision(
        Action.DEAD_LETTER, reason=f"gave up after {MAX} attempts: E")


def test_a_budget_of_one_attempt_dead_letters_the_first_transient_failure() -> None:
    assert _route(ErrorKind.TRANSIENT, attempts=1, max_attempts=1).action is Action.DEAD_LETTER


def test_the_dead_letter_path_retries_twice_as_long_then_spills_for_later() -> None:
    assert _route(ErrorKind.TRANSIENT, attempts=2 * MAX - 1, to_dlq=True).action is Action.RETRY
    assert _route(ErrorKind.TRANSIENT, attempts=2 * MAX, to_dlq=True) == Decision(
        Action.SPILL, reason="dead-letter failed: E", retry_later=True)


@pytest.mark.parametrize("kind", HOPELESS)
def test_a_hopeless_record_dead_letters_at_once_with_the_error_itself(kind: ErrorKind) -> None:
    assert _route(kind, attempts=1) == Decision(Action.DEAD_LETTER, reason="E")


@pytest.mark.parametrize("kind", HOPELESS)
def test_a_hopeless_dead_letter_spills_for_good(kind: ErrorKind) -> None:
    assert _route(kind, to_dlq=True) == Decision(
        Action.SPILL, reason="dead-letter failed: E", retry_later=False)


@pytest.mark.parametrize("kind", [ErrorKind.TRANSIENT, *HOPELESS])
def test_an_oversize_record_spills_with_a_pointer_on_its_first_failure(kind: ErrorKind) -> None:
    assert _route(kind, code=OVERSIZE, attempts=1) == Decision(Action.SPILL_OVERSIZE, reason="E")


def test_an_oversize_dead_letter_spills_like_any_other_failed_dead_letter() -> None:
    assert _route(ErrorKind.PERMANENT, code=OVERSIZE, to_dlq=True).action is Action.SPILL


@pytest.mark.parametrize("to_dlq", [False, True])
def test_a_purged_record_is_requeued_at_once_and_a_dead_producer_rebuilt(to_dlq: bool) -> None:
    assert _route(ErrorKind.REQUEUE, attempts=MAX, to_dlq=to_dlq) == Decision(Action.REQUEUE)
    assert _route(ErrorKind.FATAL, attempts=MAX, to_dlq=to_dlq) == Decision(
        Action.REBUILD, reason="E")


def test_backoff_doubles_per_attempt_and_is_capped() -> None:
    assert [backoff_ms(n, 500) for n in range(1, 8)] == [500, 1_000, 2_000, 4_000, 8_000,
                                                         16_000, 30_000]
    assert backoff_ms(10_000, 500) == 30_000
    assert backoff_ms(1, 0) == 0


# -- the rules, for every input -------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failed produce as route sees it."""

    kind: ErrorKind
    code: int | None
    attempts: int
    budget: int
    to_dlq: bool
    base_ms: int

    def route(self, *, attempts: int | None = None) -> Decision:
        return _route(self.kind, code=self.code, attempts=attempts or self.attempts,
                      max_attempts=self.budget, to_dlq=self.to_dlq, base_ms=self.base_ms)


def failures(kinds: tuple[ErrorKind, ...] = tuple(ErrorKind),
             codes: tuple[int | None, ...] = (None, OVERSIZE, KafkaError._MSG_TIMED_OUT,
                                              KafkaError._TRANSPORT),
             to_dlq: st.SearchStrategy[bool] | None = None) -> st.SearchStrategy[Failure]:
    return st.builds(Failure, kind=st.sampled_from(kinds), code=st.sampled_from(codes),
                     attempts=st.integers(1, 200), budget=st.integers(1, 50),
                     to_dlq=st.booleans() if to_dlq is None else to_dlq,
                     base_ms=st.integers(0, 20_000))


@given(failures())
def test_once_a_record_is_given_up_one_more_attempt_never_brings_back_a_retry(
    failure: Failure,
) -> None:
    now, later = failure.route(), failure.route(attempts=failure.attempts + 1)
    if now.action is not Action.RETRY:
        assert later.action is not Action.RETRY
    if now.action is Action.RETRY and later.action is Action.RETRY:
        assert now.delay_ms <= later.delay_ms


@given(failures(kinds=HOPELESS))
def test_a_permanent_or_poison_record_is_never_retried(failure: Failure) -> None:
    decision = failure.route()
    assert decision.action in GIVE_UP
    assert not decision.retry_later


@given(failures(kinds=(ErrorKind.TRANSIENT, *HOPELESS), codes=(OVERSIZE,),
                to_dlq=st.just(False)))
def test_an_oversize_record_is_always_spilled_off_the_dead_letter_path(failure: Failure) -> None:
    assert failure.route().action is Action.SPILL_OVERSIZE


@given(failures(kinds=(ErrorKind.TRANSIENT,)))
def test_a_transient_record_gets_exactly_its_budget_of_attempts(failure: Failure) -> None:
    """Off the DLQ path the budget is max_attempts, on it twice that; an oversize record has
    no budget off the DLQ path (no retry makes it fit)."""
    limit = 2 * failure.budget if failure.to_dlq else failure.budget
    if failure.code == OVERSIZE and not failure.to_dlq:
        limit = 0
    retried = [n for n in range(1, 2 * failure.budget + 2)
               if failure.route(attempts=n).action is Action.RETRY]
    assert retried == list(range(1, limit))


@given(failures())
def test_each_path_gives_up_to_its_own_sink(failure: Failure) -> None:
    """No dead-letter of a dead-letter; nothing spilled off the DLQ path but oversize."""
    action = failure.route().action
    if action in GIVE_UP:
        assert action in ({Action.SPILL} if failure.to_dlq
                          else {Action.DEAD_LETTER, Action.SPILL_OVERSIZE})


@given(failures())
def test_only_a_transient_spill_may_come_back_from_the_spool(failure: Failure) -> None:
    decision = failure.route()
    assert decision.retry_later == (decision.action is Action.SPILL
                                    and failure.kind is ErrorKind.TRANSIENT)


@given(failures())
def test_only_a_retry_waits_and_it_waits_the_capped_backoff(failure: Failure) -> None:
    decision = failure.route()
    if decision.action is Action.RETRY:
        assert decision.delay_ms == min(BACKOFF_CAP_MS,
                                        failure.base_ms * 2 ** (failure.attempts - 1))
    else:
        assert decision.delay_ms == 0


@given(failures())
def test_requeue_and_rebuild_ignore_attempts_path_and_code(failure: Failure) -> None:
    action = failure.route().action
    assert (action is Action.REQUEUE) == (failure.kind is ErrorKind.REQUEUE)
    assert (action is Action.REBUILD) == (failure.kind is ErrorKind.FATAL)


@pytest.mark.parametrize(("error", "kind"), [
    (KafkaError(KafkaError._MSG_TIMED_OUT), ErrorKind.TRANSIENT),
    (KafkaError(KafkaError._TRANSPORT), ErrorKind.TRANSIENT),
    (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), ErrorKind.PERMANENT),
    (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), ErrorKind.PERMANENT),
    (KafkaError(KafkaError._PURGE_QUEUE), ErrorKind.REQUEUE),
    (KafkaError(KafkaError._PURGE_INFLIGHT), ErrorKind.REQUEUE),
    (KafkaError(KafkaError.PRODUCER_FENCED), ErrorKind.FATAL),
    (KafkaError(KafkaError._TRANSPORT, fatal=True), ErrorKind.FATAL),
])
def test_librdkafka_errors_classify_into_kinds(error: KafkaError, kind: ErrorKind) -> None:
    assert classify(error) is kind


@pytest.mark.parametrize(("error", "gone"), [
    # librdkafka's own words (error_cb) for a connection attempt that failed...
    (KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 "
                "failed: Connection refused (after 0ms in state CONNECT)"), True),
    (KafkaError(KafkaError._TRANSPORT, "b-1:9098/1: Connection setup timed out in state "
                "CONNECT (after 30029ms in state CONNECT)"), True),
    (KafkaError(KafkaError._RESOLVE, "b-1:9098/bootstrap: Failed to resolve 'b-1:9098'"), True),
    # ...and for connections that dropped (reopened at once) or other trouble.
    (KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/1: Disconnected (after 1830ms in state "
                "UP)"), False),
    (KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"), False),
    (KafkaError(KafkaError._MSG_TIMED_OUT), False),
])
def test_a_failed_connection_attempt_is_told_apart_from_a_dropped_connection(
    error: KafkaError, gone: bool
) -> None:
    assert is_connect_failure(error) is gone
