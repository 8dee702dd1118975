"""Which Kafka errors are the record's fault, which are the weather, which kill the producer."""

from __future__ import annotations

from enum import Enum

from confluent_kafka import KafkaError


class ErrorKind(str, Enum):
    PERMANENT = "permanent"  # this record will never go through: dead-letter it
    TRANSIENT = "transient"  # try again later: counts as an attempt
    REQUEUE = "requeue"  # purged by us (producer rebuild): send again, no attempt spent
    FATAL = "fatal"  # the producer instance is unusable: build a new one
    POISON = "poison"  # produce() itself raised: this record cannot be produced as it is


_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._INVALID_ARG,
        KafkaError.POLICY_VIOLATION,
    }
)
_REQUEUE = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_FATAL = frozenset(
    {
        KafkaError._FATAL,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def classify(error: KafkaError) -> ErrorKind:
    code = error.code()
    if error.fatal() or code in _FATAL:
        return ErrorKind.FATAL
    if code in _REQUEUE:
        return ErrorKind.REQUEUE
    if code in _PERMANENT:
        return ErrorKind.PERMANENT
    return ErrorKind.TRANSIENT


def describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


def is_auth_failure(error: KafkaError) -> bool:
    return error.code() in (
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
    )


def is_connect_failure(error: KafkaError) -> bool:
    """A connection attempt failed (refused, timed out, unresolvable): the broker is gone now,
    not merely reconnecting. librdkafka ends such errors with "(after <n>ms in state CONNECT)";
    an established connection that dropped says "in state UP" and is reopened at once."""
    code = error.code()
    return code == KafkaError._RESOLVE or (
        code == KafkaError._TRANSPORT and "in state CONNECT" in error.str())
