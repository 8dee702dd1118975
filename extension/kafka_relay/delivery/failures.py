"""What happens to a record whose produce failed: ``routing.route`` decides, this applies it
(requeue, retry later, dead-letter, spill), and does the spills the pump queued. It never
touches the Producer: a spilled oversize record's DLQ pointer goes back to the pump. When
the pump itself dies, ``pump_died`` closes the ledger and spills what it held."""

import json
import time
from collections.abc import Callable
from typing import NamedTuple

from kafka_relay.config import Config
from kafka_relay.delivery.ledger import Ledger, Spill
from kafka_relay.delivery.routing import Action, Decision, route
from kafka_relay.observability.log import JsonLogger
from kafka_relay.producer.classify import ErrorKind
from kafka_relay.record import Record
from kafka_relay.spill.codec import SPILL_EVENT
from kafka_relay.spill.sinks import SpillKind


class Pointer(NamedTuple):
    """A DLQ record saying where an oversize record was spilled."""

    record: Record
    topic: str
    value: bytes
    location: str
    attempts: int = 0  # failed produces of this pointer so far


class Failures:
    def __init__(self, ledger: Ledger, config: Config, *, spill: Spill, logger: JsonLogger,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._ledger = ledger
        self._queue = ledger.queue
        self._config = config
        self._spill = spill
        self._log = logger
        self._wall_ms = wall_ms

    def failed(self, record: Record, kind: ErrorKind, code: int | None,
               reason: str) -> Decision | None:
        """Route and apply; None when the record had settled already (a late report)."""
        with self._ledger.cond:
            if record.id not in self._ledger.unsettled:
                return None
            if kind is not ErrorKind.REQUEUE:
                record.last_error = reason
                record.first_failed_ms = record.first_failed_ms or self._wall_ms()
                record.attempts += 1
                self._ledger.counts.retries += 1
            decision = route(kind, code=code, reason=reason, attempts=record.attempts,
                             max_attempts=self._config.max_attempts,
                             to_dlq=record.dlq_error is not None,
                             backoff_base_ms=self._config.retry_backoff_ms)
            if record.dlq_error is not None and decision.action is Action.SPILL:
                self._ledger.counts.dead_letter_failed += 1
            self._apply(record, decision, kind)
            return decision

    def _apply(self, record: Record, decision: Decision, kind: ErrorKind) -> None:
        queue, action = self._queue, decision.action
        if action in (Action.DEAD_LETTER, Action.SPILL_OVERSIZE):
            # Frozen here: retries towards the DLQ change neither what the headers say
            # about the record's own topic nor why it failed.
            record.dlq_attempts = record.attempts
            record.error_kind = "transient" if kind is ErrorKind.TRANSIENT else "permanent"
        if action in (Action.REQUEUE, Action.REBUILD):
            queue.put_back(record)  # a rebuilt producer sends it again, first of its key
        elif action is Action.RETRY:
            self._ledger.resident.drop((record,))  # waits: its bytes are in the journal
            queue.schedule(record, self._wall_ms() + decision.delay_ms)
        elif action is Action.DEAD_LETTER:
            record.dlq_error = decision.reason
            # Routed, not yet acknowledged: the DLQ's own delivery report settles it
            # (record.outcome, and the dead_lettered count of records.outcomes).
            self._log.warning("dead_letter.routed", id=record.id, topic=record.topic,
                              dlq_topic=record.dlq_topic, error=decision.reason,
                              error_kind=record.error_kind, attempts=record.attempts,
                              request_id=record.request_id)
            queue.push(record)
        elif action is Action.SPILL_OVERSIZE:
            record.dlq_error = decision.reason
            queue.oversize.append(record)
        else:  # SPILL, outside the lock (an S3 put takes time): see spill_waiting
            record.last_error = decision.reason
            queue.to_spill.append((record, decision.retry_later))

    def spill_waiting(self) -> tuple[int, list[Pointer]]:
        """Spill what routing sent to the spill chain; (records spilled, DLQ pointers due)."""
        with self._ledger.cond:
            waiting, self._queue.to_spill = self._queue.to_spill, []
            oversize, self._queue.oversize = self._queue.oversize, []
            if waiting or oversize:  # their bytes back if dropped in flight (or given up)
                kept = {r.id for r in self._ledger.warm([r for r, _ in waiting] + oversize)}
                waiting = [(r, later) for r, later in waiting if r.id in kept]
                oversize = [r for r in oversize if r.id in kept]
        for retry_later in (True, False):
            group = [r for r, later in waiting if later is retry_later]
            if group:
                result = self._spill(group, reason=group[0].last_error or "dead-letter failed",
                                     retry_later=retry_later)
                self._ledger.settle_spilled(group, result)
        return len(waiting) + len(oversize), [self._spill_oversize(r) for r in oversize]

    def _spill_oversize(self, record: Record) -> Pointer:
        """Too large for Kafka, so for its DLQ too: spill the bytes; a pointer for the DLQ."""
        reason = record.dlq_error or "too large"
        result = self._spill([record], reason=reason, retry_later=False)
        self._ledger.settle_spilled([record], result)
        location = result.location
        if result.kind is SpillKind.LOG:  # where to look, for the replay command
            group = f"/aws/lambda/{self._config.function_name or '<function>'}"
            location = f"{SPILL_EVENT} log lines of {group} (id {record.id})"
        value = json.dumps({"spilled_to": location, "id": record.id,
                            "size": record.size, "error": reason}).encode()
        return Pointer(record, record.dlq_topic or self._config.dlq_for(record.topic), value,
                       location)

    def pump_died(self, failure: str) -> None:
        """The pump stopped (``failure`` says why): accept nothing more, spill everything
        unsettled, wake every waiter."""
        self._ledger.close(f"the delivery pump stopped ({failure}): the extension accepts "
                           "no more records; the function should be redeployed or retried")
        self._log.error("pump.died", error=failure)
        try:
            self._ledger.spill_unsettled(self._spill, f"the delivery pump stopped: {failure}")
        finally:
            with self._ledger.cond:
                self._ledger.cond.notify_all()
