"""Which pending records keep their key and value in the process, and getting them back.

With the crash journal on, every accepted byte is in ``/tmp`` already (delivery/journal.py),
so a record's value stays in memory only while it is about to be handed to librdkafka:
records past the first in-flight window of pending bytes (``drop_waiting``), records
librdkafka took (it holds its own copy until the report) and records waiting out a retry
backoff (``drop``) keep none, and ``read_back`` puts it back from the journal
(one ``pread`` per run of contiguous frames: page cache, not the process's memory) for
whoever hands a record on: the pump, routing's spills, SHUTDOWN's spill, a restore spilled
for coming back too often. Keys stay: a key names the record's place in its key's order
(delivery/keyorder.py), and is small beside its value. A dropped record is told by its
``size``, which stays: its value ``None`` while ``size`` counts more than its key's bytes
(an empty value is never dropped: nothing to save, and it would read as a tombstone).

A read-back that fails (a file truncated by someone else, an I/O error, bytes not as
written) is loud: ``records.lost`` names the ids, the ledger gives those records up (counted
in ``unaccounted``), and from then on nothing more is dropped. Without a journal nothing is
ever dropped. Records that came through a ring file (delivery/rings.py) are dropped the same
way, journal or not, and read back from their ring. Not thread-safe: used under the
ledger's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kafka_relay.delivery.journal import Journal
from kafka_relay.delivery.rings import Rings
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record

_HINT = ("their bytes could not be read back from the crash journal (KAFKA_RELAY_JOURNAL_DIR): "
         "check that nothing else writes or truncates files there and that the disk is "
         "healthy; from now on records wait in memory")


def payload_bytes(record: Record) -> int:
    """Its key and value bytes, from ``size`` (which stays when they are dropped)."""
    if not record.headers:
        return record.size
    return record.size - sum(len(k) + len(v) for k, v in record.headers)


class Resident:
    def __init__(self, journal: Journal | None, rings: Rings, window: int,
                 logger: JsonLogger | None = None) -> None:
        self.window = window  # what the pump may have in flight (delivery/queue.py)
        self._journal = journal
        self._rings = rings
        self._log = logger
        # Cleared when a read-back failed, or when everything unsettled is being spilled
        # (outside the lock: nothing may drop their bytes then). Only journaled records and
        # ring records are ever dropped.
        self.dropping = True

    def drop_waiting(self, records: Sequence[Record], size: int, pending_bytes: int) -> None:
        """``records`` (of ``size`` bytes) were just journaled (or came in a ring) with
        ``pending_bytes`` already pending: those past the first window keep no value."""
        room = self.window - pending_bytes
        if size <= room or not self.dropping:
            return
        for record in records:
            room -= record.size
            if room < 0 and record.value:
                record.value = None

    def released(self, ids: list[str]) -> None:
        """``ids`` settled or were given up: their journal (or ring) lets them go."""
        if self._journal is not None:
            self._journal.settled(ids)
        self._rings.settled(ids)

    def drop(self, records: Iterable[Record]) -> None:
        """Handed to librdkafka, or waiting out a backoff: the journaled ones' values go (per
        record: kept to a few attribute reads)."""
        if not self.dropping:
            return
        journaled = {} if self._journal is None else self._journal.journaled
        kept = self._rings.kept
        if not (journaled or kept):
            return
        for record in records:
            if record.value and (record.id in journaled or record.id in kept):
                record.value = None

    def read_back(self, records: Iterable[Record], owned: Mapping[str, Record]
                  ) -> dict[str, str]:
        """The value back into each of ``records`` (those still ``owned``) that was
        dropped; why not, by id, for the ones whose bytes cannot be read back (or come back
        at another size), logged."""
        cold = [r for r in records if r.value is None and r.id in owned
                and payload_bytes(r) > len(r.key or b"")]
        if not cold:
            return {}
        kept = self._rings.kept
        in_rings = [r.id for r in cold if r.id in kept]
        found, problems = self._rings.read_back(in_rings) if in_rings else ({}, {})
        if len(in_rings) < len(cold) and self._journal is not None:
            journaled, trouble = self._journal.read_back(
                [r.id for r in cold if r.id not in kept])
            found.update(journaled)
            problems.update(trouble)
        for record in cold:  # per record: kept to lookups and attribute writes
            pair = found.get(record.id)
            if pair is None or record.id in problems:
                problems.setdefault(record.id, "not in the journal")
                continue
            key, value = pair
            if ((0 if key is None else len(key)) + (0 if value is None else len(value))
                    != payload_bytes(record)):
                problems[record.id] = "read back at another size than it was accepted"
                continue
            record.key = key
            record.value = value
        if problems:
            self.dropping = False
            if self._log is not None:
                self._log.error("records.lost", records=len(problems), ids=[*problems][:50],
                                errors=sorted(set(problems.values())), hint=_HINT)
        return problems
