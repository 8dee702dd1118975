"""DLQ pointers of spilled oversize records: produced like records, produced again after a
failure up to the DLQ's own attempt limit (2 x KAFKA_RELAY_MAX_ATTEMPTS), and when one
cannot be delivered (or is still unacknowledged when the pump stops) logged once as
``dead_letter.pointer_failed`` with the place its record was spilled to."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from confluent_kafka import KafkaError

from kafka_relay.delivery.failures import Pointer
from kafka_relay.observability.log import JsonLogger
from kafka_relay.producer.classify import describe
from kafka_relay.protocol import SPILLED_TO_HEADER

_HINT = "the record itself is safe where spilled_to says; replay it from there"


class Producer(Protocol):
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...


class Pointers:
    def __init__(self, *, max_attempts: int, function: str, cond: threading.Condition,
                 logger: JsonLogger) -> None:
        self._limit = 2 * max_attempts
        self._function = function
        self._cond = cond  # the ledger's: the pump's thread and its reports share these
        self._log = logger
        self._retries: list[Pointer] = []
        self._out: dict[str, Pointer] = {}  # produced, not yet acknowledged (by record id)

    def due(self) -> list[Pointer]:
        """The pointers to produce again (each once). Only the pump's thread adds them (their
        reports run in its polls), and it asks: none is read without a lock round."""
        if not self._retries:
            return []
        with self._cond:
            due, self._retries = self._retries, []
            return due

    def send(self, producer: Producer, pointer: Pointer) -> None:
        record = pointer.record

        def report(err: KafkaError | None, _msg: object) -> None:
            with self._cond:
                self._out.pop(record.id, None)
            if err is not None:
                self._failed(pointer, describe(err))

        with self._cond:
            self._out[record.id] = pointer
        try:
            producer.produce(pointer.topic, value=pointer.value, key=record.key,
                             headers=[*record.kafka_headers(dlq_topic=pointer.topic,
                                                            function=self._function),
                                      (SPILLED_TO_HEADER, pointer.location.encode())],
                             on_delivery=report)
        except Exception as exc:  # the record is spilled; only its pointer waits
            with self._cond:
                self._out.pop(record.id, None)
            self._failed(pointer, str(exc))

    def abandon(self) -> None:
        """The pump stopped: say where the records of the pointers still owed are."""
        with self._cond:
            owed = [*self._retries, *self._out.values()]
            self._retries, self._out = [], {}
        for pointer in owed:
            self._log.error("dead_letter.pointer_failed", id=pointer.record.id,
                            error="the extension stopped before the DLQ acknowledged it",
                            attempts=pointer.attempts, spilled_to=pointer.location,
                            hint=_HINT)

    def _failed(self, pointer: Pointer, error: str) -> None:
        attempts = pointer.attempts + 1
        if attempts < self._limit:
            with self._cond:
                self._retries.append(pointer._replace(attempts=attempts))
            self._log.warning("dead_letter.pointer_retry", id=pointer.record.id, error=error,
                              attempts=attempts, spilled_to=pointer.location)
            return
        self._log.error("dead_letter.pointer_failed", id=pointer.record.id, error=error,
                        attempts=attempts, spilled_to=pointer.location, hint=_HINT)
