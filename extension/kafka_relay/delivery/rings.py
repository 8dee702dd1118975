"""The records that came through ring files (``kafka_relay.ring``): the rings are their journal.

Their bytes are in the writer's ring file already (page cache: a SIGKILL of either process
keeps them), so the ledger journals them nowhere else; it tells this registry what each
body's records became. When every record of a body settled, the ring's consumed offset
moves over it, and only over contiguous entries that reached their end (refused, or every
record settled), so an extension that takes the file over finds exactly the accepted
bodies some record of which is still unsettled. A ring whose writer is gone (its ``flock``
free) is deleted once consumed to its end. Records waiting past the in-flight window keep
no key or value in the process: ``read_back`` reads them from the ring (resident.py).

Its own lock guards it: the ledger calls it under the ledger's lock, the handoff's ring
listener without (it never takes the ledger's lock while holding this one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from kafka_relay.ring import ACCEPTED, REFUSED, Ring, payloads

KeyValue = tuple[bytes | None, bytes | None]
# How long SHUTDOWN waits for killed writers to let go of consumed rings (see ``release``).
RING_RELEASE_S = 0.05
_RELEASE_POLL_S = 0.001


class RingFile:
    """One ring file as the extension holds it."""

    __slots__ = ("era", "fd", "open", "orphan", "ring", "tag")

    def __init__(self, ring: Ring, tag: str, era: str) -> None:
        self.ring = ring
        self.tag = tag
        # The handoff's id prefix when it was attached: after a restore from a snapshot (a
        # new prefix) the ring is every copy's, so it takes no more bodies.
        self.era = era
        # Entries whose records the ledger owns, by position: how many are unsettled.
        self.open: dict[int, Entry] = {}
        self.orphan = False  # the writer is gone: delete the file once consumed
        self.fd = os.open(ring.path, os.O_RDONLY | os.O_CLOEXEC)  # for its flock

    def writer_gone(self) -> bool:
        """Whether nobody holds the file's flock (then this process holds it)."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class Entry:
    __slots__ = ("file", "length", "position", "unsettled")

    def __init__(self, file: RingFile, position: int, length: int) -> None:
        self.file = file
        self.position = position
        self.length = length
        self.unsettled = 0


class Rings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kept: dict[str, Entry] = {}  # every unsettled record that came through a ring
        self.files: dict[Path, RingFile] = {}

    def attach(self, ring: Ring, tag: str, era: str = "") -> RingFile:
        with self._lock:
            file = self.files.get(ring.path)
            if file is None:
                file = self.files[ring.path] = RingFile(ring, tag, era)
            else:
                ring.close()
            return file

    def add(self, entry: Entry, ids: Sequence[str]) -> None:
        """The ledger owns ``ids``, the records of ``entry`` (none: it owns the body elsewhere,
        the outage spool): marked ``ACCEPTED`` in the file before anyone is answered."""
        with self._lock:
            entry.file.ring.mark(entry.position, ACCEPTED)
            if ids:
                entry.unsettled = len(ids)
                entry.file.open[entry.position] = entry
                self.kept.update(dict.fromkeys(ids, entry))
            else:
                self._advance(entry.file)

    def refused(self, file: RingFile, position: int) -> None:
        """The body at ``position`` was refused: a takeover never produces it."""
        with self._lock:
            file.ring.mark(position, REFUSED)
            self._advance(file)

    def settled(self, ids: Iterable[str]) -> None:
        if not self.kept:
            return
        with self._lock:
            pop = self.kept.pop
            entries = [pop(record_id, None) for record_id in ids]
            # Mostly one body's records: its entry counted down once, not once per record.
            first = entries[0] if entries else None
            counted = ({first: len(entries)} if first is not None
                       and entries.count(first) == len(entries)
                       else Counter(filter(None, entries)))
            done: set[RingFile] = set()
            for entry, records in counted.items():
                entry.unsettled -= records
                if not entry.unsettled:
                    done.add(entry.file)
            for file in done:
                self._advance(file)

    def advance(self, file: RingFile) -> None:
        """Move the consumed offset over what reached its end (deleting an orphan consumed)."""
        with self._lock:
            if file.ring.path in self.files:
                self._advance(file)

    def writer_left(self, file: RingFile) -> bool:
        """Its writer's connection closed: a writer that is gone leaves the file to us. False
        while its flock is still held (a process closes its socket before its ring file as
        it exits: ask again)."""
        with self._lock:
            if file.ring.path not in self.files:
                return True
            if not file.writer_gone():
                return False
            file.orphan = True
            self._advance(file)
            return True

    def _advance(self, file: RingFile) -> None:
        ring = file.ring
        end = None
        for position, word, entry_end in ring.entries():
            if word & REFUSED:
                end = entry_end
                continue
            entry = file.open.get(position)
            # Not answered: its writer may announce it yet, unless it is gone.
            if (not word & ACCEPTED and not file.orphan) or (
                    entry is not None and entry.unsettled):
                break
            file.open.pop(position, None)
            end = entry_end
        if end is not None:
            ring.settle(end)
        if file.orphan and ring.consumed == ring.written:
            self._delete(file)

    def _delete(self, file: RingFile) -> None:
        del self.files[file.ring.path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file.ring.path)
        file.ring.close()
        os.close(file.fd)

    def read_back(self, record_ids: Sequence[str]) -> tuple[dict[str, KeyValue], dict[str, str]]:
        """The key and value of each of ``record_ids`` (kept here), read from its ring; why
        not, by id, for the ones that cannot be."""
        found: dict[str, KeyValue] = {}
        problems: dict[str, str] = {}
        bodies: dict[Entry, list[KeyValue] | str] = {}
        with self._lock:
            for record_id in record_ids:
                entry = self.kept.get(record_id)
                if entry is None:
                    problems[record_id] = "not in a ring"
                    continue
                read = bodies.get(entry)
                if read is None:
                    try:
                        read = bodies[entry] = payloads(entry.file.ring.body(
                            entry.position, entry.length))
                    except ValueError as exc:
                        read = bodies[entry] = str(exc)
                index = int(record_id.rsplit("-", 1)[1])
                if isinstance(read, str) or index >= len(read):
                    problems[record_id] = read if isinstance(read, str) else "not in its body"
                else:
                    found[record_id] = read[index]
        return found, problems

    def release(self, until: float, *, monotonic: Callable[[], float],
                sleep: Callable[[float], None] = time.sleep) -> None:
        """A drain settled what it could: rings consumed to their end whose writers are gone
        go; the rest stay for the next init. Lambda kills the runtime before SHUTDOWN, but a
        killed writer's flock comes free a few ms later (0-4.5 ms measured, docs/cost.md "At
        SHUTDOWN"): a ring still held is looked at again until ``until`` (monotonic), so an
        environment reset does not leave it to the next init."""
        while True:
            with self._lock:
                for file in list(self.files.values()):
                    if file.orphan or file.writer_gone():
                        file.orphan = True
                        self._advance(file)
                held = any(not file.orphan for file in self.files.values())
            if not held or monotonic() >= until:
                return
            sleep(_RELEASE_POLL_S)

    def close(self) -> None:
        """Let every file go (their flocks too), deleting none: stopped without a drain."""
        with self._lock:
            for file in self.files.values():
                file.ring.close()
                os.close(file.fd)
            self.files.clear()
            self.kept.clear()

    def status(self) -> dict[str, object]:
        with self._lock:
            return {"files": len(self.files), "records": len(self.kept)}
