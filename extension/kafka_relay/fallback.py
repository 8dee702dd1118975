"""KAFKA_RELAY_FALLBACK=direct: produce in-process when no extension is listening.

A degraded mode for functions deployed without the layer's extension: the
handler pays for the producer itself and waits for delivery on every send.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer

from kafka_relay.client import SendResult
from kafka_relay.config import load_config
from kafka_relay.handoff.schema import InvalidRequest, validate
from kafka_relay.producer.settings import producer_settings, resolve_credentials
from kafka_relay.record import IdSource

_FLUSH_S = 30.0
_state: dict[str, Any] = {}


def produce_direct(
    items: Sequence[Mapping[str, Any]], *, env: Mapping[str, str], request_id: str | None
) -> SendResult:
    from kafka_relay.client import RecordRejected  # noqa: PLC0415 - avoid an import cycle

    if "producer" not in _state:
        config = load_config(env)
        _state.update(
            config=config,
            ids=IdSource(),
            producer=Producer(producer_settings(config, resolve_credentials(config))),
        )
    config, producer = _state["config"], _state["producer"]
    try:
        records = validate(list(items), default_topic=config.default_topic,
                           new_id=_state["ids"].next, request_id=request_id,
                           now_ms=int(time.time() * 1000))
    except InvalidRequest as exc:
        raise RecordRejected(str(exc), [r.as_dict() for r in exc.reasons]) from exc
    errors: dict[str, str | None] = {}
    for record in records:
        def report(err: KafkaError | None, _msg: object, rid: str = record.id) -> None:
            errors[rid] = None if err is None else f"{err.name()}: {err.str()}"

        producer.produce(record.topic, value=record.value, key=record.key,
                         headers=record.kafka_headers(),
                         timestamp=record.timestamp_ms or 0, on_delivery=report)
    producer.flush(_FLUSH_S)
    outcomes = [
        {"id": r.id, "outcome": "delivered" if errors.get(r.id, "pending") is None else "failed",
         "error": errors.get(r.id, "not delivered in time")}
        for r in records
    ]
    return SendResult(len(records), [r.id for r in records], outcomes)
