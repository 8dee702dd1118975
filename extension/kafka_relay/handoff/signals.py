"""Knowing when the handler is done: the client's end call, or Telemetry's ``platform.runtimeDone``
or ``platform.report`` for its request id.

Either may arrive before the extension has even seen the INVOKE event, so
ends are remembered by request id (bounded) until someone waits for them. A Telemetry
batch is read only when someone waits for an end the client did not signal: with the
client's end call (every invocation of a decorated handler) it is never parsed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

_REMEMBERED = 256
_UNREAD = 64  # Telemetry batches kept unread (a few per invocation at most)


class EndSignals(Protocol):
    """Where a request's end is told: the handoff's end route, Telemetry's reports."""

    def mark_done(self, request_id: str | None) -> None: ...

    def mark_later(self, read: Callable[[], None]) -> None:
        """Ends may be in something not read yet (a Telemetry batch): ``read()`` marks them,
        now or once someone waits for an end."""


class HandlerSignals:
    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._anonymous = 0
        self._monotonic = monotonic
        self._unread: deque[Callable[[], None]] = deque(maxlen=_UNREAD)
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

    def mark_later(self, read: Callable[[], None]) -> None:
        """Kept for a waiter (the oldest dropped past a bound: their requests are long over);
        one waiting now reads it at once."""
        with self._cond:
            self._unread.append(read)
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
                if self._unread:  # marks what it holds (the lock is re-entrant)
                    self._unread.popleft()()
                    continue
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
