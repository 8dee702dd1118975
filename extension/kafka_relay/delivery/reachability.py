"""Whether the broker answers, as far as kafka-relay knows: for the result line of each
invocation and for ``?wait=delivered`` requests, which are refused at once (not after their
whole wait) while it does not.

It does not answer while the init probe failed and nothing was delivered since, or while the
lifecycle's circuit breaker is open (its published status) and no record settled since. A
metadata probe that succeeds (``reprobe``) ends either, without waiting for a record.

``gone()`` tells a broker that is away right now from one that is reconnecting: librdkafka
reported a failed connection attempt (refused, timed out, unresolvable) within the last
``GONE_WINDOW_S`` and no record settled since. librdkafka reports a failure identical to a
broker's last one at most once per 30 s (the known broker is retried, not re-bootstrapped),
so the evidence holds that long; while the broker is back, pending records settle within
a reconnect backoff and end it sooner. A flush gives up early then, and a full buffer
tells the client not to wait for room. A connection that merely dropped (say while the
environment was frozen) is reopened without a failed attempt, so it keeps the flush's budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kafka_relay.producer.classify import is_connect_failure
from kafka_relay.protocol import BrokerState

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

    from kafka_relay.delivery.engine import DeliveryEngine

# librdkafka retries a failed connection at least every reconnect.backoff.max.ms (1 s by
# default) while it has records to send, but reports the same failure of the same broker
# again only after 30 s (its suppression interval): a broker still away is reported
# within this.
GONE_WINDOW_S = 31.0


class Reachability:
    def __init__(self, engine: DeliveryEngine, *,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        # The last failed connection attempt: when, and the records settled by then.
        self._failed_connect: tuple[float, int] | None = None
        self.init_error: str | None = None  # the init probe's, when the broker did not answer
        self._answered_ms = 0  # when a reprobe last heard the broker answer (wall ms)
        self._lock = threading.Lock()

    def note_client_error(self, error: KafkaError) -> None:
        """librdkafka's error_cb: remember a failed connection attempt."""
        if is_connect_failure(error):
            self._failed_connect = (self._monotonic(), self._engine.gauge().reached_kafka)

    def gone(self) -> bool:
        """A connection attempt failed within ``GONE_WINDOW_S`` and nothing settled since."""
        failed = self._failed_connect  # one read: the error callback replaces it whole
        return (failed is not None and self._monotonic() - failed[0] < GONE_WINDOW_S
                and self._engine.gauge().reached_kafka <= failed[1])

    def problem(self, breaker: object) -> dict[str, Any] | None:
        """Why the broker is not answering (``breaker``: the breaker's published status), or
        None."""
        status = breaker if isinstance(breaker, Mapping) else {}
        if self.init_error is None and status.get("state") != "open":
            return None  # the common case, asked every invocation: no gauge needed
        gauge = self._engine.gauge()
        settled = gauge.reached_kafka
        error = self._engine.pump.last_error or self.init_error
        opened_ms = int(status.get("opened_ms", 0))
        if self.init_error is not None and gauge.broker_state is not BrokerState.UP:
            return {"state": "unreachable since init", "error": error}
        if (status.get("state") == "open" and settled <= int(status.get("settled_mark", 0))
                and self._answered_ms < opened_ms):
            return {"state": "breaker open", "since_ms": opened_ms,
                    "probes": status.get("probes", 0), "error": error}
        return None

    def reprobe(self, timeout_s: float, breaker: object) -> dict[str, Any] | None:
        """``problem(breaker)`` after asking the broker for metadata for up to ``timeout_s``
        (one probe at a time; a caller arriving meanwhile waits for its answer)."""
        if self.problem(breaker) is None:
            return None
        with self._lock:
            if self.problem(breaker) is not None and self._engine.probe(timeout_s) is None:
                self._answered_ms = self._wall_ms()
        return self.problem(breaker)
