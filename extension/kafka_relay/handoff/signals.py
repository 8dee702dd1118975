"""Knowing when the handler is done: the client's end call, or Telemetry's ``platform.runtimeDone``
or ``platform.report`` for its request id.

Either may arrive before the extension has even seen the INVOKE event, so
ends are remembered by request id (bounded) until someone waits for them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

_REMEMBERED = 256


class EndSignals(Protocol):
    """Where a request's end is told: the handoff's end route, Telemetry's reports."""

    def mark_done(self, request_id: str | None) -> None: ...


class HandlerSignals:
    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._anonymous = 0
        self._monotonic = monotonic
        self.seen_any = False  # an end was ever signalled in this environment

    def mark_done(self, request_id: str | None) -> None:
        with self._cond:
            self.seen_any = True
            if request_id:
                self._ended[request_id] = None
                while len(self._ended) > _REMEMBERED:
                    self._ended.popitem(last=False)
            else:
                self._anonymous += 1
            self._cond.notify_all()

    def wait(self, request_id: str, timeout_s: float) -> bool:
        """True when the handler of ``request_id`` is known to be done within the timeout."""
        deadline = self._monotonic() + timeout_s
        with self._cond:
            while True:
                if request_id in self._ended:
                    return True
                if self._anonymous:
                    self._anonymous -= 1
                    return True
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
