"""Moving the outage spool's batches back: into memory as it frees up, or out at SHUTDOWN.

The ledger parks a batch in the spool (delivery/overflow.py) when it does not fit in memory;
these two steps take batches out again, oldest first, under the ledger's lock (the spool's
file list is guarded by it, as the journal is), so a batch parked meanwhile never overtakes
an older one.
"""

from __future__ import annotations

from collections.abc import Callable

from kafka_relay.delivery.ledger import Ledger, Spill
from kafka_relay.delivery.overflow import OverflowSpool


def refill(ledger: Ledger, overflow: OverflowSpool) -> int:
    """The oldest parked batches back into memory while they fit (journaled again before
    their files go); the records taken."""
    if not overflow:  # unlocked: a list's truth; the next call sees what this one missed
        return 0
    taken = 0
    with ledger.cond:
        limits = ledger.limits
        while (parked := overflow.oldest()) is not None:
            state = ledger.state()
            if (state.pending + len(parked.records) > limits.records
                    or state.pending_bytes + parked.size > limits.bytes):
                break
            taken += ledger.restore(parked.records)
            overflow.remove_oldest(parked)
    return taken


def spill_parked(ledger: Ledger, overflow: OverflowSpool, spill: Spill, reason: str, *,
                 until: Callable[[], bool]) -> tuple[int, int]:
    """SHUTDOWN (/tmp goes with the environment): parked batches to ``spill``, oldest first,
    until ``until()``; (records spilled, records left)."""
    spilled = 0
    with ledger.cond:
        while not until() and (parked := overflow.oldest()) is not None:
            spill(parked.records, reason=reason, retry_later=False)
            overflow.remove_oldest(parked)
            spilled += len(parked.records)
        return spilled, overflow.records
