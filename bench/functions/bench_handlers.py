"""The benchmark's Lambda handlers: two baselines that produce in the handler, and kafka-relay.

Every handler builds the same workload from its event — ``count`` JSON records of
about ``size`` bytes, keyed ``<run>-<invocation>-<i>`` so the bench can count what
reached the topic — and returns what it knows about delivery.

confluent-kafka is imported on first use only, so the kafka-relay functions' runtime
never loads librdkafka (as a real relay-based handler would not).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kafka_relay import client

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

# Filler for each record's value: random hex, so compression works as on real text-ish
# data rather than on one repeated byte.
_FILLER = os.urandom(4096).hex()
# Key and JSON value without the filler: {"run":"","n":0,"i":0,"ts":1700000000000,"pad":""}
# plus digits; the run id appears in both.
_OVERHEAD = 54
# Leave the runtime this much of the invocation to post its response after a flush.
_RESPONSE_MARGIN_S = 0.5


def records(run: str, n: int, *, count: int, size: int) -> list[dict[str, Any]]:
    """``count`` records of about ``size`` bytes each (key + JSON value), keyed
    ``<run>-<n>-<i>``."""
    pad = _FILLER[: max(0, size - _OVERHEAD - 2 * len(run))]
    now_ms = int(time.time() * 1000)
    return [
        {"key": f"{run}-{n}-{i}", "value": {"run": run, "n": n, "i": i, "ts": now_ms, "pad": pad}}
        for i in range(count)
    ]


def _workload(event: dict[str, Any]) -> list[dict[str, Any]]:
    return records(str(event["run"]), int(event["n"]), count=int(event["count"]),
                   size=int(event["size"]))


def empty(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The reference point: what the sandbox and runtime cost with no work at all."""
    return {}


# -- baselines: a Kafka client in the handler ------------------------------------------------


def _new_producer() -> Producer:
    from confluent_kafka import Producer  # noqa: PLC0415 - see the module docstring

    from kafka_relay.producer.factory import DEFAULTS  # noqa: PLC0415 - the same defaults

    return Producer({**DEFAULTS, "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"]})


def _produce_and_flush(producer: Producer, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Produce the workload, flush within the invocation, report what the broker acknowledged."""
    topic = os.environ["KAFKA_TOPIC"]
    outcome = {"delivered": 0, "failed": 0}

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        outcome["failed" if err is not None else "delivered"] += 1

    for record in _workload(event):
        producer.produce(topic, key=record["key"], on_delivery=on_delivery,
                         value=json.dumps(record["value"], separators=(",", ":")).encode())
    remaining_s = context.get_remaining_time_in_millis() / 1000 - _RESPONSE_MARGIN_S
    unflushed = producer.flush(max(0.0, remaining_s))
    return {**outcome, "unflushed": unflushed}


def seed_per_invocation(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Baseline 1, the seed pattern: a new producer per invocation, produce, flush, close."""
    producer = _new_producer()
    try:
        return _produce_and_flush(producer, event, context)
    finally:
        producer.close()
        del producer


_GLOBAL: list[Producer] = []


def global_producer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Baseline 2, the usual advice: one module-level producer, flushed every invocation."""
    if not _GLOBAL:
        _GLOBAL.append(_new_producer())
    return _produce_and_flush(_GLOBAL[0], event, context)


# The cold-start baseline creates that producer at init, as module-level code does.
if os.environ.get("BENCH_PRODUCER_AT_INIT") == "1":
    _GLOBAL.append(_new_producer())


# -- kafka-relay: hand records to the extension ------------------------------------------------


@client.relay_handler
def relay_send(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Hand the workload over; ``event["wait"]`` asks for per-record outcomes.
    ``event["refusable"]``: a batch the extension refuses (RelayBusy: nothing accepted) is
    reported, not raised, as a handler that keeps its records itself would."""
    reply: dict[str, Any]
    try:
        result = client.send(_workload(event), wait=bool(event.get("wait")))
    except client.RelayBusy as exc:
        if not event.get("refusable"):
            raise
        reply = {"accepted": 0, "refused": str(exc)}
    else:
        reply = {"accepted": result.accepted}
        if result.outcomes is not None:
            reply["delivered"] = result.count("delivered")
    if event.get("status"):
        reply["status"] = client.status()
    return reply


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


@client.relay_handler
def relay_throughput(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Hand ``batches`` batches of ``count`` records over back to back, then flush until all
    are delivered.

    Returns the handoff rate (records answered 202 per second) and the end-to-end rate
    (records delivered per second, the flush included). The records are built first,
    outside the timing.
    """
    run, count, size = str(event["run"]), int(event["count"]), int(event["size"])
    batches = [records(run, b, count=count, size=size) for b in range(int(event["batches"]))]
    total = sum(len(b) for b in batches)
    send_s = _timed(lambda: [client.send(batch) for batch in batches])
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - 1.0
    flushes: list[dict[str, Any]] = []

    def drain() -> None:
        while not flushes or (flushes[-1]["remaining"] and time.monotonic() < deadline):
            flushes.append(client.flush())

    flush_s = _timed(drain)
    status = client.status()
    return {
        "records": total,
        "send_s": send_s,
        "flush_s": flush_s,
        "handoff_rps": total / send_s,
        "e2e_rps": total / (send_s + flush_s),
        "remaining": flushes[-1]["remaining"],
        "counts": status["counts"],
    }
