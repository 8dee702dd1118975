"""The outage spool: accepted records that do not fit in memory wait on disk, in order.

When the broker is down long enough for the memory buffer to fill, a batch that does not
fit is written here instead of being refused (429), so invocations keep succeeding; once
anything is here, later batches come here too, so records leave in the order they came
(per key). As memory frees up (the broker answers), the oldest files are taken back into
the ledger, which journals them before their file is removed.

Bounded like Fluent Bit's ``storage.total_limit_size``, by ``SpoolLimits``
(delivery/budget.py derives them): at SHUTDOWN /tmp goes with the environment and every
parked batch must be read back and spilled before the deadline, so by default the spool
holds only what SHUTDOWN can spill in its half of the window (the memory buffer has the
other half): at most so many bytes of files, batches (files; each costs an open, a read and
an unlink) and records, the bytes also capped by half of the free space of the spool's
file system at init (Lambda's ephemeral storage). Measured defaults: 44 batches / 1,768
records / 663 KB at 256 MB, 305 / 12,222 / 4.6 MB at >= 1,769 MB (docs/durability.md).
``KAFKA_RELAY_SPOOL_MAX_BYTES`` set: that many bytes and no other bound (a warning at init
when SHUTDOWN cannot spill it). Past a limit a batch is refused with 507, saying which.
``KAFKA_RELAY_SPOOL_MAX_BYTES=0`` turns the spool off (a full buffer answers 429, as
without it).

Files: ``kafka-relay-overflow-<seq>.bin`` under ``<KAFKA_RELAY_SPOOL_DIR>/overflow``, each one
batch in the journal's frame format (one frame, or several for a large batch), written to
``*.partial`` and renamed, so a kill never leaves half a file to read back. They outlive a
killed extension (Lambda keeps ``/tmp`` on a reset) and the next init carries on from them.
Not thread-safe: it is used under the ledger's lock (delivery/ledger.py, delivery/outage.py).
"""

import contextlib
import os
import re
from pathlib import Path
from typing import NamedTuple

from kafka_relay.delivery.journal import Frames, decode, frame_payloads
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.sinks import quarantine

PREFIX = "kafka-relay-overflow-"
_NAME = re.compile(rf"{PREFIX}(\d{{12}})\.bin")
LIMIT_VAR = "KAFKA_RELAY_SPOOL_MAX_BYTES"


class SpoolLimits(NamedTuple):
    bytes: int  # of files; 0: no spool
    batches: int | None = None  # None: no bound (an explicit KAFKA_RELAY_SPOOL_MAX_BYTES)
    records: int | None = None


def free_space(directory: Path) -> int:
    """Free bytes on the file system that holds ``directory`` (its nearest existing parent);
    0 when it cannot be read."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


class SpoolFull(Exception):
    """The batch would pass the spool's limit (or could not be written); nothing taken."""


class Parked(NamedTuple):
    path: Path
    records: list[Record]
    size: int  # record bytes (Record.size), what the ledger's byte limit counts


class OverflowSpool:
    def __init__(self, directory: Path, limits: SpoolLimits, logger: JsonLogger) -> None:
        self.directory = directory
        self.limits = limits
        self._log = logger
        self._files: list[tuple[int, Path, int]] = []  # (seq, path, file bytes), oldest first
        self._next = 1
        self.bytes = 0
        self.records = 0
        self._scan()

    def _scan(self) -> None:
        """Carry on from files a killed predecessor left (oldest first)."""
        try:
            names = sorted(p for p in self.directory.iterdir() if _NAME.fullmatch(p.name))
        except OSError:
            return
        for path in names:
            match = _NAME.fullmatch(path.name)
            assert match is not None
            try:
                size = path.stat().st_size
                self.records += len(_read(path))
            except Exception as exc:  # one bad file must not stop the rest, nor the extension
                quarantine(path, exc, self._log, kind="overflow")
                continue
            seq = int(match.group(1))
            self._files.append((seq, path, size))
            self.bytes += size
            self._next = max(self._next, seq + 1)
        if self._files:
            self._log.warning("overflow.found", files=len(self._files), records=self.records,
                              bytes=self.bytes, dir=str(self.directory))

    @property
    def enabled(self) -> bool:
        return self.limits.bytes > 0

    def __bool__(self) -> bool:
        """Anything waiting: later batches must queue behind it."""
        return bool(self._files)

    @property
    def load(self) -> tuple[int, int, int]:
        """What waits here: (batches, records, file bytes)."""
        return len(self._files), self.records, self.bytes

    def put(self, count: int, frames: Frames) -> Path:
        """Park one batch of ``count`` records (``frames``: the journal's ``encode_batch`` of
        it), all of it, or raise SpoolFull saying why."""
        size = sum(len(part) for part in frames.parts)
        full = self._full(count, size)
        if full is not None:
            raise SpoolFull(f"the memory buffer is full and the disk spool is at its limit "
                            f"({full}): nothing accepted; retry later, when the broker has "
                            "taken some of it")
        seq = self._next
        path = self.directory / f"{PREFIX}{seq:012d}.bin"
        partial = path.with_name(path.name + ".partial")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as out:
                out.writelines(frames.parts)
            os.replace(partial, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise SpoolFull(f"the disk spool cannot write ({type(exc).__name__}: {exc}): "
                            "nothing accepted; retry later") from exc
        self._next = seq + 1
        self._files.append((seq, path, size))
        self.bytes += size
        self.records += count
        return path

    def _full(self, count: int, size: int) -> str | None:
        """Which limit the batch would pass, or None."""
        limits = self.limits
        if self.bytes + size > limits.bytes:
            return f"{self.bytes} of {limits.bytes} bytes, {LIMIT_VAR}"
        if limits.batches is not None and len(self._files) + 1 > limits.batches:
            return (f"{limits.batches} batches, what SHUTDOWN can read back and spill; "
                    f"{LIMIT_VAR} unset")
        if limits.records is not None and self.records + count > limits.records:
            return (f"{self.records} of {limits.records} records, what SHUTDOWN can spill; "
                    f"{LIMIT_VAR} unset")
        return None

    def oldest(self) -> Parked | None:
        """The oldest parked batch (read, not removed), or None."""
        while self._files:
            _seq, path, _size = self._files[0]
            try:
                records = _read(path)
            except Exception as exc:
                quarantine(path, exc, self._log, kind="overflow")
                self._drop_first()
                continue
            return Parked(path, records, sum(r.size for r in records))
        return None

    def remove_oldest(self, parked: Parked) -> None:
        """The oldest batch is owned elsewhere now (journaled): its file goes."""
        assert self._files[0][1] == parked.path, "batches leave the spool oldest first"
        self.records -= len(parked.records)
        self._drop_first()
        try:
            parked.path.unlink(missing_ok=True)
        except OSError as exc:
            self._log.warning("overflow.unlink_failed", file=str(parked.path), error=str(exc))

    def _drop_first(self) -> None:
        _seq, _path, size = self._files.pop(0)
        self.bytes -= size
        if not self._files:
            self.records = 0

    def status(self) -> dict[str, object]:
        return {"enabled": self.enabled, "dir": str(self.directory),
                "limit_bytes": self.limits.bytes, "limit_batches": self.limits.batches,
                "limit_records": self.limits.records,
                "bytes": self.bytes, "records": self.records, "files": len(self._files)}


def _read(path: Path) -> list[Record]:
    data = path.read_bytes()
    if len(data) < 8 or data[:4] != b"KRJ1":
        raise ValueError("not a kafka-relay overflow file")
    records: list[Record] = []
    end = 0
    for start, end in frame_payloads(data):
        records += decode(data[start:end])
    if end != len(data):
        raise ValueError(f"{len(data)} bytes, its frames end at byte {end}")
    return records
