"""The broker circuit breaker: pure state and transitions, owned by the event loop.

Closed: invocations flush as the strategy says. It opens when a flush ends with records
pending and none settled (the broker did not answer within the budget). While open,
invocations call /next at once — the records stay buffered (429 past the limits) and the
pump keeps sending whenever the environment runs; at most every ``probe_interval_ms``
(doubling up to a cap) one invocation spends a short probe flush to give the producer time
to reconnect. Any record settled since it opened (a background delivery or a probe) closes it.

Closed after an outage it is *catching up* until nothing is pending (seen, or left by a
flush): the backlog the outage
left (a memory buffer and an outage spool full of records) would take one invocation's flush
a second or more to deliver, so each flush meanwhile is capped at ``CATCH_UP_BUDGET_MS`` and
the backlog leaves over the next few invocations (and in the background while they run).
"""

from typing import NamedTuple

FIRST_PROBE_INTERVAL_MS = 1_000
MAX_PROBE_INTERVAL_MS = 2_000
PROBE_BUDGET_MS = 250  # enough for a reconnect and a produce round trip at 20 ms RTT
CATCH_UP_BUDGET_MS = 500


class Breaker(NamedTuple):
    open: bool = False
    opened_ms: int = 0
    settled_mark: int = 0  # records settled (delivered + dead-lettered) when it opened
    next_probe_ms: int = 0
    probe_interval_ms: int = FIRST_PROBE_INTERVAL_MS
    probes: int = 0
    catching_up: bool = False  # closed after an outage, its backlog not yet delivered

    def trip(self, now_ms: int, settled: int) -> "Breaker":
        return Breaker(open=True, opened_ms=now_ms, settled_mark=settled,
                       next_probe_ms=now_ms + FIRST_PROBE_INTERVAL_MS)

    def probe_due(self, now_ms: int) -> bool:
        return self.open and now_ms >= self.next_probe_ms

    def probed(self, now_ms: int) -> "Breaker":
        """A probe ran without closing it: the next one waits twice as long (capped)."""
        interval = min(MAX_PROBE_INTERVAL_MS, self.probe_interval_ms * 2)
        return self._replace(next_probe_ms=now_ms + self.probe_interval_ms,
                             probe_interval_ms=interval, probes=self.probes + 1)

    def observe(self, settled: int, pending: int) -> "Breaker":
        """Closed again once anything settled since it opened: the broker answers (catching
        up while records are pending); caught up once none are."""
        if self.open and settled > self.settled_mark:
            return Breaker(catching_up=pending > 0)
        if self.catching_up and not pending:
            return Breaker()
        return self

    def as_status(self) -> dict[str, object]:
        if not self.open:
            return {"state": "closed"}
        # settled_mark: the handoff server tells an open breaker from one a background delivery
        # has closed but the loop has not yet observed (records settled past the mark).
        return {"state": "open", "opened_ms": self.opened_ms, "next_probe_ms": self.next_probe_ms,
                "probes": self.probes, "settled_mark": self.settled_mark}
