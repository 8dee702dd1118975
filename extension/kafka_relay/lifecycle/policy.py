"""The flush policy: a pure function of (strategy, state, clock, moment).

``end``       wait for the handler, flush before calling /next;
``periodic``  the same, but only when the last flush is older than the interval —
              otherwise call /next at once and pay nothing after the handler;
``shutdown``  never before /next; everything is drained at SHUTDOWN.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kafka_relay.config import FlushMode, FlushStrategy


class Moment(str, Enum):
    INVOKE = "invoke"  # an INVOKE event arrived
    HANDLER_DONE = "handler_done"  # the handler finished (client end call or runtimeDone)
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class Decision:
    wait_for_handler: bool
    flush: bool
    reason: str


def decide(
    strategy: FlushStrategy, *, last_flush_ms: int, now_ms: int, moment: Moment
) -> Decision:
    if moment is Moment.SHUTDOWN:
        return Decision(False, True, "shutdown drains everything")
    if strategy.mode is FlushMode.SHUTDOWN:
        return Decision(False, False, "flush strategy 'shutdown'")
    if strategy.mode is FlushMode.END:
        return Decision(moment is Moment.INVOKE, moment is Moment.HANDLER_DONE, "strategy 'end'")
    due = now_ms - last_flush_ms >= strategy.interval_ms
    reason = f"last flush {now_ms - last_flush_ms} ms ago, interval {strategy.interval_ms} ms"
    if moment is Moment.INVOKE:
        return Decision(due, False, reason)
    return Decision(False, due, reason)
