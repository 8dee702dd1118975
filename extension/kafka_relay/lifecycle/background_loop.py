"""The event loop when Lambda sends no INVOKE (Lambda Managed Instances): SHUTDOWN only.

Nothing is frozen and invocations overlap, so nothing waits for an invocation:
a ticker thread calls ``listener.tick()`` (spool, per-request reports, metrics)
while the main thread blocks on ``/event/next``, which answers only SHUTDOWN.
An INVOKE that arrives anyway (a registration for it that Lambda accepted after
all) is logged and ignored: delivery never depended on it. A failure of a tick
is logged and the ticker goes on; only SHUTDOWN or a lost Extensions API ends
the loop, each with the drain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from kafka_relay.errors import LambdaApiError
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent, UnknownEvent, parse_event
from kafka_relay.lifecycle.listener import ShutdownSummary
from kafka_relay.lifecycle.loop import Ending, EventSource
from kafka_relay.observability.log import JsonLogger

TICK_S = 0.25


class BackgroundListener(Protocol):
    def tick(self) -> None:
        """Periodic background work; may raise (logged, the ticker goes on)."""

    def shutdown(self, event: ShutdownEvent) -> ShutdownSummary:
        """Drain until the deadline, spill the rest, release everything."""


class BackgroundLoop:
    def __init__(self, listener: BackgroundListener, logger: JsonLogger, *, api: EventSource,
                 tick_s: float = TICK_S,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._listener = listener
        self._log = logger
        self._api = api
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_forever, name="kafka-relay-ticker",
                                        daemon=True)
        self._ending = Ending(listener.shutdown, logger, api=api, wall_ms=wall_ms)
        self.ticks = 0

    def run(self) -> int:
        """Serve until SHUTDOWN; the process exit code."""
        self._ticker.start()
        try:
            while True:
                try:
                    raw = self._api.next_event()
                except LambdaApiError as exc:
                    self._log.error("lifecycle.next_failed", error=str(exc))
                    return self._shutdown(ShutdownEvent("next_failed", None))
                parsed = parse_event(raw)
                self._ending.note(parsed)
                event = parsed.event
                if isinstance(event, ShutdownEvent):
                    return self._shutdown(event)
                if isinstance(event, InvokeEvent):
                    self._log.info("lifecycle.invoke_ignored", invoke_request_id=event.request_id)
                elif isinstance(event, UnknownEvent):
                    self._log.warning("lifecycle.unknown_event", event_type=event.event_type)
        except Exception as exc:  # a bug in this loop: still drain before reporting it
            self._stop_ticker()
            return self._ending.crashed(exc)

    def _tick_forever(self) -> None:
        while not self._stop.wait(self._tick_s):
            try:
                self._listener.tick()
            except Exception as exc:
                self._log.error("lifecycle.tick_failed", error=repr(exc))
            self.ticks += 1

    def _stop_ticker(self) -> None:
        self._stop.set()
        if self._ticker.is_alive() and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=0.5)

    def _shutdown(self, event: ShutdownEvent) -> int:
        self._stop_ticker()
        return self._ending.shutdown(event)
