"""Knowing when the handler is done: the client's end call, or Telemetry's ``platform.runtimeDone``
or ``platform.report`` for its request id.

Either may arrive before the extension has even seen the INVOKE event, so
ends are remembered by request id (bounded) until someone waits for them. A Telemetry
batch is read only when someone has waited a while for an end the client did not signal
(or gives up): with the client's end call (every invocation of a decorated handler) it is
never parsed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

_REMEMBERED = 256
_UNREAD = 64  # Telemetry batches kept unread (a few per invocation at most)
# A waiter reads Telemetry batches once it has waited this long: Telemetry's shortest
# buffering (what kafka-relay subscribes with), so a request's platform.runtimeDone comes
# no sooner after its start, while the client's end call usually has come by then.
READ_AFTER_S = 0.025


class EndSignals(Protocol):
    """Where a request's end is told: the handoff's end route, Telemetry's reports."""

    def mark_done(self, request_id: str | None, *, called: bool = False) -> None:
        """``called``: told by the client's end call (not by Telemetry)."""

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
        self._reading = 0  # waiters past READ_AFTER_S: they read a batch as it comes
        self.seen_any = False  # an end was ever signalled in this environment
        # The client's end call came here: a decorated handler, whose every end is told as
        # it returns (not Telemetry's, which comes 25 ms or more later).
        self.called = False

    def mark_done(self, request_id: str | None, *, called: bool = False) -> None:
        with self._cond:
            self.seen_any = True
            self.called = self.called or called
            if request_id:
                self._ended[request_id] = None
                while len(self._ended) > _REMEMBERED:
                    self._ended.popitem(last=False)
            else:
                self._anonymous += 1
            self._cond.notify_all()

    def mark_later(self, read: Callable[[], None]) -> None:
        """Kept for a waiter (the oldest dropped past a bound: their requests are long over);
        one that has waited ``READ_AFTER_S`` reads it at once. One that has not is not woken:
        it reads what is kept once it has (a batch comes at about every thaw, while the loop
        waits for the client's end call)."""
        with self._cond:
            self._unread.append(read)
            if self._reading:
                self._cond.notify_all()

    def wait(self, request_id: str, timeout_s: float) -> bool:
        """True when the handler of ``request_id`` is known to be done within the timeout."""
        start = self._monotonic()
        deadline, read_from = start + timeout_s, start + READ_AFTER_S
        with self._cond:
            while True:
                if request_id in self._ended:
                    return True
                if self._anonymous:
                    self._anonymous -= 1
                    return True
                now = self._monotonic()
                if self._unread and (now >= read_from or now >= deadline):
                    self._unread.popleft()()  # marks what it holds (the lock is re-entrant)
                    continue
                remaining = deadline - now
                if remaining <= 0:
                    return False
                if now < read_from:
                    self._cond.wait(min(remaining, read_from - now))
                    continue
                self._reading += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._reading -= 1
