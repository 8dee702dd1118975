"""Taking back what a dead predecessor journaled, at init, and letting the journal go.

Both run under the ledger's lock (the journal is guarded by it), as the outage spool's
steps do (delivery/outage.py).
"""

from typing import NamedTuple

from kafka_relay.delivery.journal import MAX_RECOVERIES, Journal
from kafka_relay.delivery.ledger import Ledger, Spill


class Recovery(NamedTuple):
    """What ``recover_journal`` took back from a dead predecessor."""

    records: int  # restored (counted ``restored``)
    files: int
    recovered: int  # how many times these records have now come back
    spilled: int  # came back too often: spilled instead of sent again


def recover_journal(ledger: Ledger, journal: Journal | None, spill: Spill) -> Recovery | None:
    """Own again the records a dead predecessor journaled (counted ``restored``, same ids);
    None without a journal. Records that came back ``MAX_RECOVERIES`` times without settling
    are spilled instead: a record that kills the process must not kill every next one too."""
    with ledger.cond:
        if journal is None or not journal.enabled:
            return None
        left = journal.leftovers()
        restored = ledger.restore(left.records, recovered=left.recovered + 1)
        if journal.enabled:  # their records are journaled again: the old files can go
            journal.discard(left.files)
        # Back too often: spilled, with their bytes (read back where dropped).
        again = restored and left.recovered >= MAX_RECOVERIES
        records = ledger.warm([r for r in left.records if r.id in ledger.unsettled]) \
            if again else []
    if records:
        ledger.settle_spilled(records, spill(
            records, retry_later=False,
            reason=f"restored from the journal {left.recovered} times and the extension "
                   "died each time before they settled"))
    return Recovery(restored, len(left.files), left.recovered + 1, len(records))


def release_journal(ledger: Ledger, journal: Journal | None, *, clean: bool) -> None:
    """Stop journaling. ``clean``: remove it when nothing is unsettled (a drain that settled
    everything); otherwise it stays for the next init, as a killed process leaves it."""
    with ledger.cond:
        if journal is not None:
            journal.release(remove=clean and not ledger.unsettled)
