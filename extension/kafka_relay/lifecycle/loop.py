"""The event loop: INVOKE → wait for the handler, flush per policy → /next; SHUTDOWN → drain.

Calling /next lets Lambda freeze the sandbox, so nothing before it is unbounded:
every wait is capped by the invocation's ``deadlineMs`` and the flush budget.
The loop talks to the rest of the extension only through a ``Listener``; an
exception from the listener during an INVOKE is logged and the loop carries on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from kafka_relay.config import EXTENSION_SHUTDOWN_MS, Config, FlushMode
from kafka_relay.errors import LambdaApiError
from kafka_relay.lifecycle.events import (
    InvokeEvent,
    Parsed,
    ShutdownEvent,
    UnknownEvent,
    parse_event,
)
from kafka_relay.lifecycle.listener import FlushReport, Listener
from kafka_relay.lifecycle.policy import (
    Decision,
    FlushState,
    Moment,
    Observed,
    decide,
    needs_observation,
)
from kafka_relay.observability.log import JsonLogger

# Leave the runtime this much of the invocation for its own /next after our flush.
_INVOKE_MARGIN_MS = 50
RUNTIME_ERROR = "Extension.RuntimeError"
_UNOBSERVED = Observed()  # what a decision that does not read the engine is given


class EventSource(Protocol):
    """The part of the Extensions API the loop uses."""

    def next_event(self) -> dict[str, Any]: ...

    def exit_error(self, error_type: str, message: str) -> None: ...


class InvokeSource(EventSource, Protocol):
    """The Extensions API as the INVOKE loop uses it: also /next sent ahead of reading it."""

    def request_next(self) -> None:
        """Send /next now; the next ``next_event`` reads its answer."""


class Ending:
    """How both event loops end: SHUTDOWN goes to the listener (which drains and spills), and
    whatever fails on the way is reported to Lambda as an exit error."""

    def __init__(self, shutdown: Callable[[ShutdownEvent], object], logger: JsonLogger, *,
                 api: EventSource | None, wall_ms: Callable[[], int]) -> None:
        self._shutdown = shutdown
        self._log = logger
        self._api = api
        self._wall_ms = wall_ms

    def lost_deadline(self) -> int:
        """Without a deadline from Lambda (lost API, malformed event): the external budget."""
        return self._wall_ms() + EXTENSION_SHUTDOWN_MS

    def shutdown(self, event: ShutdownEvent) -> int:
        """Hand SHUTDOWN to the listener; 0, or 1 (and an exit error) when it raised."""
        if event.deadline_ms is None:
            event = ShutdownEvent(event.reason, self.lost_deadline())
        try:
            self._shutdown(event)
        except Exception as exc:
            self._log.error("lifecycle.shutdown_failed", error=repr(exc))
            self.exit_error(f"kafka-relay failed while shutting down: {exc!r}")
            return 1
        return 0

    def crashed(self, exc: Exception) -> int:
        """A bug in a loop: still drain and spill, then report it."""
        self._log.error("lifecycle.crashed", error=repr(exc))
        try:
            self._shutdown(ShutdownEvent("error", self.lost_deadline()))
        except Exception as again:
            self._log.error("lifecycle.shutdown_failed", error=repr(again))
        self.exit_error(f"kafka-relay's event loop stopped unexpectedly: {exc!r}")
        return 1

    def exit_error(self, message: str) -> None:
        if self._api is None:
            return
        try:
            self._api.exit_error(RUNTIME_ERROR, message)
        except Exception as exc:  # the API is gone too: the log line is all that is left
            self._log.error("lifecycle.exit_error_failed", error=repr(exc))

    def note(self, parsed: Parsed) -> None:
        for note in parsed.notes:
            self._log.info("lifecycle.event_note", note=note)


class EventLoop:
    def __init__(
        self,
        listener: Listener,
        config: Config,
        logger: JsonLogger,
        *,
        api: InvokeSource | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._listener = listener
        self._config = config
        self._log = logger
        self._api = api
        self._wall_ms = wall_ms
        self.state = FlushState(last_flush_ms=wall_ms())
        self.invocations = 0
        self._deferring: bool | None = None  # auto's last choice, to log its changes
        self._ending = Ending(listener.shutdown, logger, api=api, wall_ms=wall_ms)

    def run(self) -> int:
        """Serve events until SHUTDOWN; the process exit code.

        An unexpected exception still drains and spills (through the listener's
        shutdown) before it is reported to Lambda as an exit error."""
        try:
            return self._serve()
        except Exception as exc:
            return self._ending.crashed(exc)

    def _serve(self) -> int:
        assert self._api is not None, "the event loop needs the Extensions API"
        while True:
            try:
                raw = self._api.next_event()
            except LambdaApiError as exc:
                self._log.error("lifecycle.next_failed", error=str(exc))
                return self.shutdown(ShutdownEvent("next_failed", None))
            parsed = parse_event(raw)
            self._ending.note(parsed)
            event = parsed.event
            if isinstance(event, InvokeEvent):
                self.invoke(event)
                stopped = self._delivery_stopped()
                if stopped is not None:
                    return self._restart_environment(stopped)
            elif isinstance(event, ShutdownEvent):
                return self.shutdown(event)
            elif isinstance(event, UnknownEvent):
                self._log.warning("lifecycle.unknown_event", event_type=event.event_type)

    def invoke(self, event: InvokeEvent) -> None:
        """Handle one INVOKE; listener failures are logged, never raised."""
        self.invocations += 1
        self.state = self.state.arrived(self._wall_ms())
        try:
            self._listener.on_invoke(event)
        except Exception as exc:
            self._log.error("lifecycle.listener_failed", step="on_invoke", error=repr(exc))
        flush: FlushReport | None = None
        deferred = False
        try:
            flush, deferred = self._wait_and_flush(event)
        except Exception as exc:
            self._log.error("lifecycle.listener_failed", step="flush", error=repr(exc))
        try:
            self._listener.invocation_done(event, flush, deferred=deferred)
        except Exception as exc:
            self._log.error("lifecycle.listener_failed", step="invocation_done",
                            error=repr(exc))

    def _wait_and_flush(self, event: InvokeEvent) -> tuple[FlushReport | None, bool]:
        """The flush's report (None: none), and whether the invocation deferred after its
        handler ended. A deferred invocation still waits for the handler's end when the
        client tells it (a decorated handler), so that the extension's own work (the
        report, the pump's round) runs after the handler instead of beside it."""
        config = self._config
        deadline_ms = event.deadline_ms or self._wall_ms() + config.flush_budget_ms
        decision = self._decide(Moment.INVOKE)
        remaining_s = (deadline_ms - _INVOKE_MARGIN_MS - self._wall_ms()) / 1000
        if not decision.wait_for_handler:
            if decision.deferred and self._listener.ends_called():
                self._listener.handler_done(event.request_id, max(0.0, remaining_s))
                self._request_next()
                return None, True
            return None, False
        done = self._listener.handler_done(event.request_id, max(0.0, remaining_s))
        after = self._decide(Moment.HANDLER_DONE)
        if not after.flush:
            return None, False
        budget_ms = min(config.flush_budget_ms, after.budget_ms or config.flush_budget_ms,
                        deadline_ms - _INVOKE_MARGIN_MS - self._wall_ms())
        report = self._listener.flush(max(0, budget_ms))
        now = self._wall_ms()
        was_open = self.state.breaker.open
        # A flush that found nothing to do changed nothing the breaker looks at: no new look.
        settled = self._observe().settled if report.remaining or report.settled else 0
        self.state = self.state.flushed(now, remaining=report.remaining,
                                        settled_during=report.settled, settled=settled,
                                        probe=after.probe, budget_ms=budget_ms)
        if after.probe:
            self._log.info("breaker.probe", remaining=report.remaining, settled=report.settled,
                           next_probe_ms=self.state.breaker.next_probe_ms)
        elif self.state.breaker.open and not was_open:
            self._log.warning("breaker.open", remaining=report.remaining, budget_ms=budget_ms,
                              hint="the broker did not answer: invocations stop waiting for it "
                                   "until a record is delivered again; records stay buffered")
            self._publish()
        if report.remaining:
            self._log.warning("flush.incomplete", remaining=report.remaining,
                              budget_ms=budget_ms, handler_done=done)
        return report, False

    def _request_next(self) -> None:
        """/next now, before the invocation's report and the pump's round (the next
        ``next_event`` reads its answer): nothing the handler waits for is left, and the
        environment may freeze once the runtime answered too."""
        if self._api is None:
            return
        with contextlib.suppress(LambdaApiError):  # next_event asks again on its own
            self._api.request_next()

    def _observe(self) -> Observed:
        observed = self._listener.observe()
        was_open = self.state.breaker.open
        self.state = self.state.observe(observed)
        if was_open and not self.state.breaker.open:
            self._log.info("breaker.closed", settled=observed.settled, pending=observed.pending)
            self._publish()
        return observed

    def _decide(self, moment: Moment) -> Decision:
        observed = (self._observe() if needs_observation(self._config.flush, self.state)
                    else _UNOBSERVED)
        decision = decide(self._config.flush, self.state, observed, now_ms=self._wall_ms(),
                          moment=moment, max_latency_ms=self._config.max_latency_ms)
        if moment is Moment.INVOKE and self._config.flush.mode is FlushMode.AUTO \
                and not self.state.breaker.open and decision.deferred != self._deferring:
            self._deferring = decision.deferred
            self._log.info("flush.auto", deferring=decision.deferred, reason=decision.reason,
                           pending=observed.pending, oldest_pending_ms=observed.oldest_pending_ms)
            self._publish()
        return decision

    def _publish(self) -> None:
        arrivals = self.state.arrivals
        predicted = arrivals.predicted_gap_ms()
        self._listener.publish({
            "breaker": self.state.breaker.as_status(),
            "deferring": bool(self._deferring),
            "invocations": arrivals.invocations,
            "predicted_gap_ms": None if predicted is None else round(predicted),
            "max_latency_ms": self._config.max_latency_ms,
        })

    def shutdown(self, event: ShutdownEvent) -> int:
        """Hand SHUTDOWN to the listener; 0, or 1 (and an exit error) when it raised."""
        return self._ending.shutdown(event)

    def _delivery_stopped(self) -> str | None:
        try:
            return self._listener.stopped()
        except Exception as exc:
            self._log.error("lifecycle.listener_failed", step="observe", error=repr(exc))
            return None

    def _restart_environment(self, why: str) -> int:
        """Delivery stopped for good (its records were spilled then): release everything and
        ask Lambda for a fresh environment, whose extension delivers again."""
        self._log.error("lifecycle.delivery_stopped", error=why)
        if self._ending.shutdown(ShutdownEvent("delivery_stopped", None)) == 0:
            self._ending.exit_error(
                f"kafka-relay's delivery stopped ({why}); everything it held was spilled "
                "(KAFKA_RELAY_SPILL log lines or S3: replay them with python -m "
                "kafka_relay.tools.replay); Lambda restarts the environment")
        return 1
