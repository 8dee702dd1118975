"""The write-ahead journal: accepted records survive the extension process dying.

Lambda resets an environment whose extension crashed (SIGKILL, segfault, OOM kill) and
keeps ``/tmp`` for the next init, so every accepted batch is appended to a segment file
under ``KAFKA_RELAY_JOURNAL_DIR`` before the 202, and the next init restores what is
still there. Cost model (``python -m bench.journal_cost``):

- one ``os.write`` of the pre-encoded batch per accepted batch, no fsync: a killed
  process leaves its writes in the page cache; only a kernel crash loses them, and that
  destroys the environment (and ``/tmp``) anyway;
- a batch is one frame (magic, length, ``marshal`` of the record fields): C speed, where
  the JSON/base64 spill format cost more than the whole handoff. The files are never
  portable: the header names the format and Python version, anything else is quarantined;
- no write at all per settled record: each segment counts its unsettled records; a
  rotated segment is deleted when that reaches 0, the open one truncated back to its
  header. Recovery restores every record of a surviving segment: settled ones come back
  as duplicates under their ``x-relay-id`` (at-least-once), bounded by ``SEGMENT_BYTES``.

On by default. When it cannot write (disk full, permissions, an I/O error, the directory
held by another process) ``append`` raises ``JournalUnwritable`` and the ledger refuses
the batch (507): a 202 is never given for a batch a crash could lose. The condition is
logged once (``journal.write_failed``), shown in ``/v1/status``, and every next batch
tries again, so journaling resumes by itself (``journal.resumed``) once writing works.

Own files only: ``kafka-relay-journal-*.bin`` opening with a JSON header line; other
files are never read or deleted; a torn last frame (kill mid-write) is skipped; a file
that does not parse otherwise is renamed ``*.corrupt`` and logged. ``flock`` on a lock
file keeps a second live process out. Not thread-safe: the ledger calls it under its lock.
"""

import contextlib
import fcntl
import json
import marshal
import os
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.sinks import quarantine

FILE_PREFIX = "kafka-relay-journal-"
FILE_GLOB = f"{FILE_PREFIX}*.bin"
LOCK_NAME = "kafka-relay-journal.lock"
FORMAT = "kafka-relay-journal"
VERSION = 1
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # marshal's format follows it
_FRAME = struct.Struct("<4sI")  # magic, payload length
_MAGIC = b"KRJ1"
SEGMENT_BYTES = 1024 * 1024  # a new segment past this: bounds duplicates after a crash
MAX_RECOVERIES = 3  # records restored this often without settling: spilled, not restored


Frame = tuple[bytes, bytes]  # (frame header, payload): written with one writev, not joined


def encode(records: Iterable[Record]) -> Frame:
    """One journal write: a frame holding every field a record is rebuilt from. Fields that
    only restored records carry go in one ``None`` when unset (marshal's cost is per object)."""
    payload = marshal.dumps([
        (r.id, r.topic, r.key, r.value, r.headers, r.timestamp_ms, r.request_id, r.accepted_ms,
         None if not (r.attempts or r.dlq_error or r.last_error) else
         (r.attempts, r.first_failed_ms, r.last_error, r.dlq_error)) for r in records])
    return _FRAME.pack(_MAGIC, len(payload)), payload


def decode(payload: bytes) -> list[Record]:
    """The records of one frame; ValueError/TypeError when it is not what ``encode`` wrote."""
    entries = marshal.loads(payload)
    if not isinstance(entries, list):
        raise ValueError("a journal frame must hold a list")
    records = []
    for (record_id, topic, key, value, headers, timestamp_ms, request_id, accepted_ms,
         failed) in entries:
        if not (isinstance(record_id, str) and isinstance(topic, str)):
            raise ValueError("a journal record needs a string id and topic")
        record = Record(id=record_id, topic=topic, key=key, value=value,
                        headers=tuple((str(n), bytes(v)) for n, v in headers),
                        timestamp_ms=timestamp_ms, request_id=request_id,
                        accepted_ms=int(accepted_ms))
        if failed is not None:
            attempts, record.first_failed_ms, record.last_error, record.dlq_error = failed
            record.attempts = int(attempts)
        records.append(record)
    return records


class JournalUnwritable(Exception):
    """The batch could not be journaled; the message says why and what to do."""


class _Segment:
    __slots__ = ("header", "path", "recovered", "size", "unsettled")

    def __init__(self, path: Path, recovered: int) -> None:
        self.path = path
        self.recovered = recovered  # how many recoveries its records went through
        self.unsettled = 0
        self.size = 0
        self.header = 0  # bytes of its header line (truncated back to when it empties)


class Leftovers(NamedTuple):
    """What a dead predecessor left: its records (first copy of each id) and files."""

    records: list[Record]
    files: list[Path]
    recovered: int  # the highest recovery count among the files


class Journal:
    def __init__(self, directory: Path, logger: JsonLogger) -> None:
        self.directory = directory
        self._log = logger
        self._lock_fd: int | None = None
        self._active: _Segment | None = None
        self._fd: int | None = None
        self._segment_of: dict[str, _Segment] = {}
        self.error: str | None = None  # why it stopped writing (None: it writes)

    # -- opening and closing -------------------------------------------------------------

    def open(self) -> bool:
        """Take the directory (False, logged, when it cannot: ``append`` tries again)."""
        if self._lock_fd is not None:
            return True
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            return self._fail("journal.unavailable", f"{type(exc).__name__}: {exc}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            return self._fail("journal.locked", f"{self.directory} is held by process "
                              f"{holder or '?'}: two extensions never share a journal; set "
                              "KAFKA_RELAY_JOURNAL_DIR to a directory of its own")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass  # the holder's pid is only shown to a second process; the lock is what counts
        self._lock_fd = fd
        return True

    @property
    def enabled(self) -> bool:
        """It holds its directory and its last write worked."""
        return self._lock_fd is not None and self.error is None

    def release(self, *, remove: bool = False) -> None:
        """Stop writing and let the directory go. ``remove``: nothing is unsettled (a clean
        SHUTDOWN), so no own segment is kept either."""
        if self._lock_fd is None:
            return
        active = self._active
        self._close_active()
        if remove:
            if active is not None:
                self._unlink(active.path)
            for segment in {id(s): s for s in self._segment_of.values()}.values():
                self._unlink(segment.path)
            self._segment_of.clear()
            with contextlib.suppress(OSError):
                (self.directory / LOCK_NAME).unlink()
        os.close(self._lock_fd)
        self._lock_fd = None
        if remove:
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only when empty: foreign files stay

    def _fail(self, event: str, error: str) -> bool:
        """Record why it cannot write; logged once per condition, not once per batch."""
        if self.error is None:
            self._log.error(event, dir=str(self.directory), error=error,
                            hint="batches are refused (507) until the journal writes again; "
                                 "free space in KAFKA_RELAY_JOURNAL_DIR or point it at a "
                                 "writable directory")
        self.error = error
        return False

    # -- writing -------------------------------------------------------------------------

    def append(self, ids: Sequence[str], frame: Frame, *, recovered: int = 0) -> None:
        """Journal one batch (``frame`` = ``encode`` of the records with ``ids``), or raise
        JournalUnwritable. After a failure every call tries again."""
        if not ids:
            return
        if not self.open():
            raise JournalUnwritable(self._refusal())
        active = self._active
        try:
            if active is None or active.size >= SEGMENT_BYTES or active.recovered != recovered:
                active = self._start(recovered)
            assert self._fd is not None
            _write_all(self._fd, *frame)
        except OSError as exc:
            # The segment may end in a torn frame now: recovery skips it, and this batch is
            # refused, so nothing answered 202 is in it. The next batch starts a new segment.
            self._close_active()
            self._fail("journal.write_failed", f"{type(exc).__name__}: {exc}")
            raise JournalUnwritable(self._refusal()) from exc
        if self.error is not None:
            self._log.warning("journal.resumed", dir=str(self.directory), after=self.error)
            self.error = None
        active.size += len(frame[0]) + len(frame[1])
        active.unsettled += len(ids)
        self._segment_of.update(dict.fromkeys(ids, active))

    def settled(self, record_ids: Iterable[str]) -> None:
        """Records reached their outcome: a segment goes once none of its records is left."""
        emptied: list[_Segment] = []
        pop = self._segment_of.pop
        for record_id in record_ids:
            segment = pop(record_id, None)
            if segment is not None:
                segment.unsettled -= 1
                if not segment.unsettled:
                    emptied.append(segment)
        for segment in emptied:
            if segment is self._active and self._fd is not None:
                try:  # one syscall, where a new file would take four
                    os.ftruncate(self._fd, segment.header)
                    segment.size = segment.header
                    continue
                except OSError:
                    self._close_active()
            self._unlink(segment.path)

    def _refusal(self) -> str:
        return (f"the crash journal cannot write ({self.error}), so this batch could not be "
                f"kept through a crash: nothing accepted; retry later (KAFKA_RELAY_JOURNAL_DIR="
                f"{self.directory})")

    def _start(self, recovered: int) -> _Segment:
        self._close_active()
        name = f"{FILE_PREFIX}{os.getpid()}-{os.urandom(6).hex()}.bin"
        segment = _Segment(self.directory / name, recovered)
        header = json.dumps({"format": FORMAT, "version": VERSION, "python": PYTHON,
                             "recovered": recovered}, separators=(",", ":")).encode() + b"\n"
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                           0o600)
        try:
            _write_all(self._fd, header, b"")
        except OSError:
            self._close_active()
            self._unlink(segment.path)  # a half header holds nothing; leave no file behind
            raise
        self._active = segment
        segment.size = segment.header = len(header)
        return segment

    def _close_active(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._active = None

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            self._log.warning("journal.unlink_failed", file=str(path), error=str(exc))

    # -- recovery ------------------------------------------------------------------------

    def leftovers(self) -> Leftovers:
        """Records in own segments that are not this process's (a crashed predecessor's)."""
        if self._lock_fd is None:
            return Leftovers([], [], 0)
        mine = {s.path for s in self._segment_of.values()}
        try:
            files = sorted(p for p in self.directory.glob(FILE_GLOB) if p not in mine)
        except OSError as exc:
            self._log.error("journal.unreadable", dir=str(self.directory), error=str(exc))
            return Leftovers([], [], 0)
        records: dict[str, Record] = {}
        kept: list[Path] = []
        recovered = 0
        for path in files:
            try:
                found, times = _read_segment(path)
            except Exception as exc:  # one bad file must not stop the rest, nor the extension
                quarantine(path, exc, self._log, kind="journal")
                continue
            kept.append(path)
            recovered = max(recovered, times)
            for record in found:
                records.setdefault(record.id, record)
        return Leftovers(list(records.values()), kept, recovered)

    def discard(self, files: Iterable[Path]) -> None:
        """Leftover files whose records are journaled again (or settled)."""
        for path in files:
            self._unlink(path)

    # -- reading -------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        segments = {id(s): s for s in self._segment_of.values()}
        return {"enabled": self.enabled, "dir": str(self.directory), "error": self.error,
                "segments": len(segments), "records": len(self._segment_of)}


def _write_all(fd: int, head: bytes, body: bytes) -> None:
    """Both buffers, in order, in (nearly always) one syscall."""
    written = os.writev(fd, [head, body])
    rest = memoryview(head + body)[written:] if written < len(head) + len(body) else b""
    while rest:
        rest = rest[os.write(fd, rest):]


def _read_segment(path: Path) -> tuple[list[Record], int]:
    """Its records and recovery count. A torn last frame (killed mid-write: its batch was
    never answered 202) is skipped; anything else that does not parse raises."""
    data = path.read_bytes()
    end = data.find(b"\n")
    if end < 0:
        return [], 0  # killed before its header was whole: nothing in it was answered
    header = json.loads(data[:end])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("no kafka-relay journal header on the first line")
    if header.get("version") != VERSION or header.get("python") != PYTHON:
        raise ValueError(f"journal version {header.get('version')!r} of Python "
                         f"{header.get('python')!r}: this is {VERSION} of {PYTHON}")
    records: list[Record] = []
    offset = end + 1
    while offset < len(data):
        if len(data) - offset < _FRAME.size:
            break  # torn frame header
        magic, length = _FRAME.unpack_from(data, offset)
        if magic != _MAGIC:
            raise ValueError(f"no journal frame at byte {offset}")
        start = offset + _FRAME.size
        if start + length > len(data):
            break  # torn frame
        records += decode(data[start:start + length])
        offset = start + length
    return records, int(header.get("recovered") or 0)
