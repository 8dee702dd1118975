"""What the event loop asks of the rest of the extension: the Listener protocol.

The loop knows nothing of HTTP or Kafka; each Lambda mode plugs in the engine listener
(``modes/engine_listener.py``), which drives the delivery engine and waits on the
handler-done signals.
"""

from collections.abc import Mapping
from typing import NamedTuple, Protocol

from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent
from kafka_relay.lifecycle.policy import Observed


class FlushReport(NamedTuple):
    duration_ms: float
    remaining: int  # records still unsettled when the budget ran out
    settled: int = 0  # records delivered or dead-lettered during the flush


class ShutdownSummary(NamedTuple):
    drained: int  # settled during the SHUTDOWN drain
    spilled: int  # written to a spill sink at SHUTDOWN
    pending: int  # still unsettled afterwards (should be 0)
    unaccounted: int  # accepted + restored - settled - pending (must be 0)
    failed_steps: tuple[str, ...] = ()  # drain steps that raised (logged) but were survived


class Listener(Protocol):
    def on_invoke(self, event: InvokeEvent) -> None:
        """An INVOKE arrived (before waiting for the handler)."""

    def handler_done(self, request_id: str, timeout_s: float) -> bool:
        """Block until the handler of ``request_id`` is done; False when the timeout ran out."""

    def observe(self) -> Observed:
        """What the flush policy needs now: pending records, the oldest one's age, progress."""

    def stopped(self) -> str | None:
        """Why delivery stopped for good, None while it runs (asked after every INVOKE: no
        look at the engine's counts)."""

    def flush(self, budget_ms: int) -> FlushReport:
        """Deliver what is pending within ``budget_ms``."""

    def publish(self, status: Mapping[str, object]) -> None:
        """The loop's flush control (breaker, auto) changed: show it in /v1/status."""

    def ends_called(self) -> bool:
        """Whether handlers here tell their end as they return (the client's end call), so
        a deferred invocation may wait for it."""

    def invocation_done(self, event: InvokeEvent, flush: FlushReport | None, *,
                        deferred: bool = False) -> None:
        """The invocation's work is over (report it); the loop calls /next next. ``flush``
        None: not flushed; ``deferred``: its handler ended, but the acknowledgements are
        not waited for (``auto``)."""

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        """Stop accepting, drain until the deadline, spill the rest, release everything.

        Must attempt every step even when an earlier one raises."""
