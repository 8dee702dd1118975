"""KAFKA_RELAY_FALLBACK=direct: produce in-process the batches no extension took.

A degraded mode for functions deployed without the layer's extension (or whose extension
died): the handler pays for a producer itself and waits for delivery on every send. The
client imports this module by name only when the fallback is on, so ``kafka_relay.client``
stays stdlib-only.

Every record is validated like the extension does (a bad one rejects the whole call, nothing
produced) and gets an ``x-relay-id``. A record not acknowledged within the time given is
purged from the producer's queue and reported ``failed``: the caller still owns it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

from kafka_relay.config import Config, load_config
from kafka_relay.handoff.schema import InvalidRequest, validate
from kafka_relay.producer.classify import describe
from kafka_relay.producer.factory import ProducerFactory
from kafka_relay.protocol import Outcome, RecordRejected
from kafka_relay.record import IdSource

_BUFFER_WAIT_S = 0.05


@dataclass(frozen=True)
class _Direct:
    config: Config
    producer: Producer
    ids: IdSource


_lock = threading.Lock()
_direct: _Direct | None = None


def _instance(env: Mapping[str, str]) -> _Direct:
    """One producer per process, built on first use (threads may race to it) and again only
    if the configuration changed."""
    global _direct  # noqa: PLW0603 - the producer's connections outlive invocations
    config = load_config(env)
    with _lock:
        if _direct is None or _direct.config != config:
            _direct = _Direct(config, ProducerFactory(config)(), IdSource())
        return _direct


def produce(
    items: Sequence[Mapping[str, Any]],
    *,
    env: Mapping[str, str],
    request_id: str | None,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Produce ``items`` and wait up to ``timeout_s``: one outcome per record, in order,
    ``delivered`` or ``failed`` (with the error)."""
    direct = _instance(env)
    deadline = time.monotonic() + timeout_s
    try:
        records = validate(list(items), default_topic=direct.config.default_topic,
                           new_ids=direct.ids.take, request_id=request_id,
                           now_ms=int(time.time() * 1000))
    except InvalidRequest as exc:
        raise RecordRejected(str(exc), [r.as_dict() for r in exc.reasons]) from exc
    errors: dict[str, str | None] = {}  # id -> None (delivered) or why not

    def report(record_id: str, err: KafkaError | None, _msg: object) -> None:
        errors[record_id] = None if err is None else describe(err)

    producer = direct.producer
    for record in records:
        headers: list[tuple[str, str | bytes | None]] = [*record.kafka_headers()]
        while record.id not in errors:
            try:
                producer.produce(record.topic, value=record.value, key=record.key,
                                 headers=headers,
                                 timestamp=record.timestamp_ms or 0,
                                 on_delivery=functools.partial(report, record.id))
                break
            except BufferError:  # librdkafka's queue is full: let deliveries make room
                if time.monotonic() >= deadline:
                    errors[record.id] = "the producer's queue stayed full"
                producer.poll(_BUFFER_WAIT_S)
            except Exception as exc:  # this record cannot be produced; the others go on
                errors[record.id] = f"{type(exc).__name__}: {exc}"
    if producer.flush(max(0.0, deadline - time.monotonic())):
        # Not acknowledged in time: take them back out of the queue, so a record reported
        # failed is not delivered later behind the caller's back.
        producer.purge(in_queue=True, in_flight=False, blocking=False)
        producer.poll(0)
    outcomes: list[dict[str, Any]] = []
    for record in records:
        error = errors.get(record.id, "not delivered within the time this invocation had left")
        outcome = Outcome.DELIVERED if error is None else Outcome.FAILED
        outcomes.append({"id": record.id, "outcome": outcome.value, "error": error})
    return outcomes
