"""What to do with a record whose produce failed: a pure function of the error and the
record's state, so every path is unit-tested without a broker."""

from enum import Enum
from typing import NamedTuple

from confluent_kafka import KafkaError

from kafka_relay.producer.classify import ErrorKind

BACKOFF_CAP_MS = 30_000


class Action(str, Enum):
    RETRY = "retry"  # produce again after ``delay_ms``
    REQUEUE = "requeue"  # produce again now, no attempt spent (we purged it)
    DEAD_LETTER = "dead_letter"  # send it to the DLQ with the x-relay-* headers
    SPILL = "spill"  # the DLQ will not take it either: S3, spool or log lines
    SPILL_OVERSIZE = "spill_oversize"  # too large for Kafka: spill it, a pointer to the DLQ
    REBUILD = "rebuild"  # the producer is unusable: a new one re-sends this record


class Decision(NamedTuple):
    action: Action
    delay_ms: int = 0
    reason: str = ""  # the x-relay-error of a dead-letter / why it was spilled
    retry_later: bool = False  # SPILL: the /tmp spool may bring it back (a transient failure)


def backoff_ms(attempts: int, base_ms: int, cap_ms: int = BACKOFF_CAP_MS) -> int:
    """``base``, ``2·base``, ``4·base``, … after 1, 2, 3, … attempts, capped."""
    return int(min(cap_ms, base_ms * (2 ** max(0, min(attempts - 1, 32)))))


def route(
    kind: ErrorKind,
    *,
    code: int | None,
    reason: str,
    attempts: int,
    max_attempts: int,
    to_dlq: bool,
    backoff_base_ms: int,
) -> Decision:
    """``attempts`` counts this failure already (it is not spent on REQUEUE).

    Off the DLQ path: oversize → spill + pointer; permanent or poison → DLQ; transient →
    retry with backoff until ``max_attempts``, then DLQ. On the DLQ path: permanent or
    poison → spill; transient → retry until ``2 * max_attempts``, then spill.
    """
    if kind is ErrorKind.REQUEUE:
        return Decision(Action.REQUEUE)
    if kind is ErrorKind.FATAL:
        return Decision(Action.REBUILD, reason=reason)
    hopeless = kind in (ErrorKind.PERMANENT, ErrorKind.POISON)
    retry = Decision(Action.RETRY, backoff_ms(attempts, backoff_base_ms), reason)
    if to_dlq:
        if hopeless or attempts >= 2 * max_attempts:
            return Decision(Action.SPILL, reason=f"dead-letter failed: {reason}",
                            retry_later=not hopeless)
        return retry
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return Decision(Action.SPILL_OVERSIZE, reason=reason)
    if hopeless:
        return Decision(Action.DEAD_LETTER, reason=reason)
    if attempts >= max_attempts:
        return Decision(Action.DEAD_LETTER, reason=f"gave up after {attempts} attempts: {reason}")
    return retry
