"""Per-request accounting without INVOKE events (Lambda Managed Instances).

There, many invocations run at once and the extension hears of none of them: it
learns a request id from the client's ``X-Kafka-Relay-Request-Id`` header, and
that the request is over from the client's ``/v1/invocation/end`` or Telemetry's
``platform.report`` (what Managed Instances send per request; ``platform.runtimeDone``
where it comes). ``RequestAccounting`` sits between the handoff server
and the engine (it is the server's ``DeliveryPort``): every batch that carries a
request id is accepted with a watch, so the outcomes of that request's records
are known as they settle. ``due()`` hands out one summary per request once it
ended and its records settled (or a while after it ended, with what is still
pending), for the ``invocation.done`` line of that request id.

The global counts (accepted = delivered + ... + pending) stay the engine's;
this is the per-request view. A ``wait=delivered`` call that times out takes
its records' watch with it: they are reported as pending.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from kafka_relay.delivery.engine import DeliveryEngine, FlushResult, Watch
from kafka_relay.delivery.rings import Entry
from kafka_relay.handoff.signals import EndSignals
from kafka_relay.protocol import Outcome
from kafka_relay.record import Record

# A request that ended is reported once its records settled, or after this long.
SETTLE_WAIT_S = 30.0
# A request that never said it ended (no end call, no Telemetry report) is reported after this:
# longer than Lambda's longest invocation.
STALE_AFTER_S = 960.0
_REMEMBERED = 4_096  # reported request ids: a late second end signal is not a new request


class _Tally:
    __slots__ = ("accepted", "ended", "started", "watches")

    def __init__(self, started: float) -> None:
        self.started = started
        self.accepted = 0
        self.watches: list[Watch] = []
        self.ended: float | None = None

    def outcomes(self) -> dict[str, int]:
        counts = dict.fromkeys(("delivered", "dead_lettered", "spilled"), 0)
        for watch in self.watches:
            # copy() is one C call under the GIL: the pump may be settling records meanwhile.
            for outcome, _detail in watch.outcomes.copy().values():
                if outcome is Outcome.DELIVERED:
                    counts["delivered"] += 1
                elif outcome is Outcome.DEAD_LETTERED:
                    counts["dead_lettered"] += 1
                elif outcome is Outcome.SPILLED:
                    counts["spilled"] += 1
        return counts


class RequestAccounting:
    def __init__(self, engine: DeliveryEngine, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 settle_wait_s: float = SETTLE_WAIT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self._engine = engine
        self._monotonic = monotonic
        self._settle_wait_s = settle_wait_s
        self._stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._open: dict[str, _Tally] = {}
        self._reported: OrderedDict[str, None] = OrderedDict()

    # -- the handoff server's DeliveryPort ---------------------------------------------------

    def accept(self, records: Sequence[Record], *, watch: bool = False,
               entry: Entry | None = None) -> Watch | None:
        request_id = records[0].request_id if records else None
        if not request_id:
            return self._engine.accept(records, watch=watch, entry=entry)
        # BufferFull: nothing counted
        registered = self._engine.accept(records, watch=True, entry=entry)
        assert registered is not None
        with self._lock:
            tally = self._tally(request_id)
            tally.accepted += len(records)
            tally.watches.append(registered)
        return registered if watch else None

    def note_rejected(self, records: int) -> None:
        self._engine.note_rejected(records)

    def flush(self, timeout_s: float) -> FlushResult:
        return self._engine.flush(timeout_s)

    def status(self) -> dict[str, Any]:
        status = self._engine.status()
        with self._lock:
            status["requests_open"] = len(self._open)
        return status

    # -- requests ----------------------------------------------------------------------------

    def ended(self, request_id: str | None) -> None:
        """The request's handler is done (client end call, Telemetry report or runtimeDone)."""
        if not request_id:
            return
        with self._lock:
            if request_id in self._reported:
                return  # the other signal of a request already reported
            tally = self._tally(request_id)
            if tally.ended is None:
                tally.ended = self._monotonic()

    def due(self, *, final: bool = False) -> list[dict[str, Any]]:
        """Summaries of the requests that are over (``final``: of every open one), removed
        from the open set; each is the ``invocation.done`` fields of one request id."""
        now = self._monotonic()
        with self._lock:
            tallies = list(self._open.items())
        reports: list[dict[str, Any]] = []
        for request_id, tally in tallies:
            counts = tally.outcomes()
            pending = tally.accepted - sum(counts.values())
            if final or self._over(tally, pending, now):
                reports.append({"request_id": request_id, "accepted": tally.accepted,
                                **counts, "pending": pending, "ended": tally.ended is not None})
        with self._lock:
            for report in reports:
                request_id = str(report["request_id"])
                self._open.pop(request_id, None)
                self._reported[request_id] = None
            while len(self._reported) > _REMEMBERED:
                self._reported.popitem(last=False)
        return reports

    def open_requests(self) -> int:
        with self._lock:
            return len(self._open)

    def _over(self, tally: _Tally, pending: int, now: float) -> bool:
        if tally.ended is not None:
            return pending <= 0 or now - tally.ended >= self._settle_wait_s
        return now - tally.started >= self._stale_after_s

    def _tally(self, request_id: str) -> _Tally:
        tally = self._open.get(request_id)
        if tally is None:
            tally = self._open[request_id] = _Tally(self._monotonic())
        return tally


class AccountedSignals:
    """End signals, wrapped: a request's end also closes its accounting."""

    def __init__(self, signals: EndSignals, accounting: RequestAccounting) -> None:
        self._signals = signals
        self._accounting = accounting

    def mark_done(self, request_id: str | None, *, called: bool = False) -> None:
        self._signals.mark_done(request_id, called=called)
        self._accounting.ended(request_id)

    def mark_later(self, read: Callable[[], None]) -> None:
        read()  # nobody waits here: a request's end closes its report as it comes
