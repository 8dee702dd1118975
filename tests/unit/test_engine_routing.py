"""routing.route is total and pure: every (error kind, code, attempts, DLQ path) has one action."""

from __future__ import annotations

import itertools

import pytest
from confluent_kafka import KafkaError

from kafka_relay.delivery.routing import Action, Decision, backoff_ms, route
from kafka_relay.producer.classify import ErrorKind, classify

MAX = 3
CODES = [None, KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._MSG_TIMED_OUT]


def _route(kind: ErrorKind, *, code: int | None = None, attempts: int = 1,
           to_dlq: bool = False) -> Decision:
    return route(kind, code=code, reason="E", attempts=attempts, max_attempts=MAX,
                 to_dlq=to_dlq, backoff_base_ms=100)


def _expected(kind: ErrorKind, code: int | None, attempts: int, to_dlq: bool) -> Action:
    """The table, written out independently of route's branches."""
    if kind is ErrorKind.REQUEUE:
        return Action.REQUEUE
    if kind is ErrorKind.FATAL:
        return Action.REBUILD
    hopeless = kind in (ErrorKind.PERMANENT, ErrorKind.POISON)
    if to_dlq:
        return Action.SPILL if hopeless or attempts >= 2 * MAX else Action.RETRY
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return Action.SPILL_OVERSIZE
    return Action.DEAD_LETTER if hopeless or attempts >= MAX else Action.RETRY


@pytest.mark.parametrize(("kind", "code", "attempts", "to_dlq"), list(itertools.product(
    list(ErrorKind), CODES, range(1, 2 * MAX + 2), [False, True])))
def test_every_state_routes_to_exactly_the_tabled_action(
    kind: ErrorKind, code: int | None, attempts: int, to_dlq: bool
) -> None:
    decision = _route(kind, code=code, attempts=attempts, to_dlq=to_dlq)
    assert decision.action is _expected(kind, code, attempts, to_dlq)
    if decision.action is Action.RETRY:
        assert decision.delay_ms == backoff_ms(attempts, 100)
    else:
        assert decision.delay_ms == 0


def test_a_dead_letter_after_retries_says_how_many_attempts() -> None:
    decision = _route(ErrorKind.TRANSIENT, attempts=MAX)
    assert decision == Decision(Action.DEAD_LETTER, reason=f"gave up after {MAX} attempts: E")


def test_a_permanent_error_dead_letters_with_the_error_itself() -> None:
    assert _route(ErrorKind.PERMANENT).reason == "E"


def test_only_a_transient_dlq_failure_may_come_back_from_the_spool() -> None:
    exhausted = _route(ErrorKind.TRANSIENT, attempts=2 * MAX, to_dlq=True)
    refused = _route(ErrorKind.PERMANENT, to_dlq=True)
    poison = _route(ErrorKind.POISON, to_dlq=True)
    assert (exhausted.action, exhausted.retry_later) == (Action.SPILL, True)
    assert (refused.action, refused.retry_later) == (Action.SPILL, False)
    assert (poison.action, poison.retry_later) == (Action.SPILL, False)
    assert refused.reason == "dead-letter failed: E"


def test_backoff_doubles_per_attempt_and_is_capped() -> None:
    assert [backoff_ms(n, 500) for n in range(1, 8)] == [500, 1_000, 2_000, 4_000, 8_000,
                                                         16_000, 30_000]
    assert backoff_ms(10_000, 500) == 30_000
    assert backoff_ms(1, 0) == 0


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
