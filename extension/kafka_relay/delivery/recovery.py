"""Taking back what a dead predecessor journaled (or left in ring files), at init, and letting
the journal go.

Both run under the ledger's lock (the journal is guarded by it), as the outage spool's
steps do (delivery/outage.py).
"""

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from kafka_relay.config import Config
from kafka_relay.delivery.journal import MAX_RECOVERIES, Journal
from kafka_relay.delivery.ledger import NO_REQUEST, Ledger, Spill
from kafka_relay.delivery.rings import Entry, RingFile
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.ring import (
    PREFIX,
    VERSION,
    Ring,
    body_records,
    count_takeover,
    pending,
    record_ids,
    tag_of,
)


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


# A ring body's Records, validated by the handoff's own reader, with the ids and the request
# id given.
RingReader = Callable[[bytes, list[str], str | None], list[Record]]


class RingRecovery:
    """Taking over ring files an earlier extension served: at init, and when a writer that
    outlived it says hello (the ring listener). Without ``read`` (no crash durability) what
    they hold is let go instead."""

    def __init__(self, ledger: Ledger, config: Config, *, read: RingReader | None,
                 spill: Spill, logger: JsonLogger) -> None:
        self.rings = ledger.rings
        self._ledger = ledger
        self._config = config
        self._read = read
        self._spill = spill
        self._log = logger

    def at_start(self) -> Recovery:
        recovery = recover_rings(self._ledger, self._config.ring_dir, self._config.port,
                                 read=self._read, spill=self._spill, logger=self._log)
        if recovery.files:
            self._log.warning("ring.taken_over", records=recovery.records,
                              files=recovery.files, recovered=recovery.recovered,
                              dir=str(self._config.ring_dir))
        return recovery

    def take_over(self, file: RingFile) -> int:
        """A live writer's ring: own again what it holds accepted and unsettled (counted
        ``restored``, same ids); the records taken."""
        return take_over(self._ledger, file, read=self._read, spill=self._spill,
                         logger=self._log).records


def recover_rings(ledger: Ledger, directory: Path, port: int, *, read: RingReader | None,
                  spill: Spill, logger: JsonLogger) -> Recovery:
    """Take over the ring files an earlier extension on ``port`` served: own again what they
    hold accepted and unsettled (counted ``restored``, same ids; nothing without ``read``: no
    crash durability); those whose writers are gone are deleted once consumed."""
    records = files = 0
    recovered = 0
    for path in sorted(directory.glob(f"{PREFIX}{port}-*.ring")):
        tag = tag_of(path, port)
        if tag is None or path in ledger.rings.files:
            continue
        try:
            ring = Ring.open(path)
        except (OSError, ValueError) as exc:
            logger.warning("ring.unreadable", path=str(path), error=str(exc))
            continue
        if ring.version != VERSION:
            logger.warning("ring.old_version", path=str(path), version=ring.version,
                           hint=f"an earlier kafka-relay's ring (version {ring.version}): "
                                "taken over; its entries carry no request id, so its records "
                                f"are counted under request {NO_REQUEST!r}")
        file = ledger.rings.attach(ring, tag)
        file.orphan = file.writer_gone()
        taken = take_over(ledger, file, read=read, spill=spill, logger=logger)
        records += taken.records
        files += taken.files  # a ring with nothing pending (a live writer's new one) is no news
        recovered = max(recovered, taken.recovered)
        ledger.rings.advance(file)  # consumed already: deleted now
    return Recovery(records, files, recovered, 0)


def take_over(ledger: Ledger, file: RingFile, *, read: RingReader | None, spill: Spill,
              logger: JsonLogger) -> Recovery:
    """Own again the accepted, unsettled bodies of a ring an earlier extension served (without
    ``read``, let them go: logged). Records that came back ``MAX_RECOVERIES`` times without
    settling are spilled instead."""
    ring = file.ring
    bodies = list(pending(ring))  # one pass: each body read once
    if not bodies:
        return Recovery(0, 0, 0, 0)
    if read is None:
        logger.warning("ring.not_restored", path=str(ring.path), bodies=len(bodies),
                       hint="KAFKA_RELAY_JOURNAL=false: records accepted before the extension "
                            "restarted are not produced again")
        ledger.rings.advance(file)
        return Recovery(0, 0, 0, 0)
    count = count_takeover(ring)
    restored = 0
    owned: list[Record] = []
    for position, _end, request_id, body in bodies:
        length = len(body)
        try:
            records = read(body, record_ids(file.tag, position, body_records(body)),
                           request_id)
        except ValueError as exc:
            logger.error("records.lost", path=str(ring.path), position=position,
                         error=str(exc), hint="a ring entry accepted earlier no longer reads "
                         "as a body: check that nothing else writes to KAFKA_RELAY_RING_DIR")
            ledger.rings.refused(file, position)
            continue
        restored += ledger.restore(records, recovered=count, entry=Entry(file, position, length))
        owned += records
    if count > MAX_RECOVERIES and owned:
        with ledger.cond:
            again = ledger.warm([r for r in owned if r.id in ledger.unsettled])
        if again:
            ledger.settle_spilled(again, spill(
                again, retry_later=False,
                reason=f"restored from a ring {count - 1} times and the extension died each "
                       "time before they settled"))
    return Recovery(restored, 1, count, 0)
