"""The write-ahead journal: accepted records survive the extension process dying.

Lambda resets an environment whose extension crashed (SIGKILL, segfault, OOM kill) and
keeps ``/tmp`` for the next init, so every accepted batch is appended to a segment file
under ``KAFKA_RELAY_JOURNAL_DIR`` before the 202, and the next init restores what is
still there. Cost model (``python -m bench.journal_cost``):

- one ``os.writev`` of the pre-encoded batch per accepted batch, no fsync: a killed
  process leaves its writes in the page cache; only a kernel crash loses them, and that
  destroys the environment (and ``/tmp``) anyway;
- a batch is one frame (magic, length, ``marshal`` of the record fields), or several of at
  most ``FRAME_BYTES`` of records each: C speed, where the JSON/base64 spill format cost
  more than the whole handoff. The files are never portable: the header names the format
  (``VERSION``) and Python version, anything else is quarantined;
- the batch's frames are followed, in the same ``writev``, by its commit mark (``_COMMIT``
  and the byte length of the frames before it). Restore takes a batch only with its mark,
  so it restores exactly the batches whose append completed, never part of one: a kill
  during the ``writev`` leaves a prefix of the batch (the kernel copies a write in order and
  the file grows with what was copied), which has no mark; bytes after a cut (garbage)
  would have to be the mark, at the offset the frames' lengths lead to, naming their total.
  8 bytes and one ``struct.pack`` per batch, not a checksum: a CRC32 of the frames would
  cost three times their ``marshal`` (16 against 5.5 us per 64 KB), before the 202;
- no write at all per settled record: each segment counts its unsettled records; a
  rotated segment is deleted when that reaches 0, the open one truncated back to its
  header. Recovery restores every record of a surviving segment: settled ones come back
  as duplicates under their ``x-relay-id`` (at-least-once), bounded by ``SEGMENT_BYTES``.

The journal also holds the bytes of records that wait: the ledger drops the key and value
of records past the in-flight window and ``read_back`` returns them when their turn comes
(one ``pread`` per run of contiguous frames, from the page cache, not the process's
memory). Each segment keeps a read descriptor from its creation until it is retired, so a
file unlinked by someone else stays readable; a frame that cannot be read back (an I/O
error, a file truncated by someone else) is named to the caller, which gives those records
up loudly.

On by default. When it cannot write (disk full, permissions, an I/O error, the directory
held by another process) ``append`` raises ``JournalUnwritable`` and the ledger refuses
the batch (507): a 202 is never given for a batch a crash could lose. The condition is
logged once (``journal.write_failed``), shown in ``/v1/status``, and every next batch
tries again, so journaling resumes by itself (``journal.resumed``) once writing works.

Own files only: ``kafka-relay-journal-*.bin`` opening with a JSON header line; other
files are never read or deleted; whatever follows a segment's last committed batch (a batch
cut by a kill) is skipped and logged (``journal.torn_tail``); a file that does not parse
otherwise, or of another ``VERSION``, is renamed ``*.corrupt`` and logged. ``flock`` on a lock
file keeps a second live process out. Not thread-safe: the ledger calls it under its lock.
"""

import contextlib
import fcntl
import itertools
import json
import marshal
import operator
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.sinks import quarantine

FILE_PREFIX = "kafka-relay-journal-"
FILE_GLOB = f"{FILE_PREFIX}*.bin"
LOCK_NAME = "kafka-relay-journal.lock"
FORMAT = "kafka-relay-journal"
# 2: batches end in a commit mark. A version-1 segment (no marks) is refused, not read: its
# reader cannot tell a cut batch from a whole one, and it can only meet this code where
# KAFKA_RELAY_JOURNAL_DIR outlives a layer update (/tmp goes with the environment).
VERSION = 2
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # marshal's format follows it
_FRAME = struct.Struct("<4sI")  # magic, payload length
_MAGIC = b"KRJ1"
_COMMIT = b"KRJ."  # a commit mark: _FRAME with this magic and the batch's frames' bytes
SEGMENT_BYTES = 1024 * 1024  # a new segment past this: bounds duplicates after a crash
# A batch larger than this (its records' bytes) is journaled as several frames, so reading
# back a window of records decodes little more than the window. Below glibc's 128 KB mmap
# threshold: a larger frame is mapped, and freeing it raises the threshold, so later large
# buffers stay on the heap (the drain bench measured 1.86x per pending byte with 128 KB
# frames, 1.04-1.37x with these); smaller buffers also marshal faster (0.81 vs 0.92-1.04
# us per 1 KB record).
FRAME_BYTES = 64 * 1024
MAX_RECOVERIES = 3  # records restored this often without settling: spilled, not restored


Frame = tuple[bytes, bytes]  # (frame header, payload): written with one writev, not joined


class Frames(NamedTuple):
    """One batch as journal frames, written with one ``writev``."""

    parts: list[bytes]  # header, payload, header, payload, ...
    counts: list[int]  # records in each frame, in order


def encode_batch(records: Sequence[Record], size: int) -> Frames:
    """``records`` (of ``size`` record bytes) as frames of at most ``FRAME_BYTES`` of
    records each (a record larger than that is a frame of its own); one for most batches."""
    if size <= FRAME_BYTES:
        return Frames(list(encode(records)), [len(records)])
    parts: list[bytes] = []
    counts: list[int] = []
    start = taken = 0
    for index, record in enumerate(records):
        if taken and taken + record.size > FRAME_BYTES:
            parts += encode(records[start:index])
            counts.append(index - start)
            start, taken = index, 0
        taken += record.size
    parts += encode(records[start:])
    counts.append(len(records) - start)
    return Frames(parts, counts)


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


def frame_payloads(data: bytes, offset: int = 0) -> Iterator[tuple[int, int]]:
    """(start, end) of each whole frame's payload in ``data`` from ``offset``; stops at a
    torn frame (too short for its header or its length). ValueError where no frame starts."""
    while len(data) - offset >= _FRAME.size:
        magic, length = _FRAME.unpack_from(data, offset)
        if magic != _MAGIC:
            raise ValueError(f"no journal frame at byte {offset}")
        start = offset + _FRAME.size
        if start + length > len(data):
            return
        yield start, start + length
        offset = start + length


def _committed_payloads(data: bytes, offset: int) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each frame payload of the committed batches in ``data`` from
    ``offset`` (frames followed by the commit mark naming their length), and where the last
    of them ends. Stops at the first bytes that are neither a whole frame nor the mark of
    the frames before them: a batch a kill cut, and whatever follows it."""
    spans: list[tuple[int, int]] = []
    batch: list[tuple[int, int]] = []
    begun = offset  # where the batch being read began
    while len(data) - offset >= _FRAME.size:
        magic, length = _FRAME.unpack_from(data, offset)
        if magic == _MAGIC and offset + _FRAME.size + length <= len(data):
            batch.append((offset + _FRAME.size, offset + _FRAME.size + length))
            offset += _FRAME.size + length
        elif magic == _COMMIT and batch and length == offset - begun:
            spans += batch
            batch = []
            offset = begun = offset + _FRAME.size
        else:
            break
    return spans, begun


class JournalUnwritable(Exception):
    """The batch could not be journaled; the message says why and what to do."""


KeyValue = tuple[bytes | None, bytes | None]


class _Segment:
    __slots__ = ("header", "path", "reader", "recovered", "size", "unsettled")

    def __init__(self, path: Path, recovered: int) -> None:
        self.path = path
        self.recovered = recovered  # how many recoveries its records went through
        self.unsettled = 0
        self.size = 0
        self.header = 0  # bytes of its header line (truncated back to when it empties)
        self.reader: int | None = None  # read descriptor: read_back works even if unlinked


class _Frame:
    """Where one frame is: its records' bytes are read back from here."""

    __slots__ = ("length", "offset", "segment")

    def __init__(self, segment: _Segment, offset: int, length: int) -> None:
        self.segment = segment
        self.offset = offset  # of its frame header in the segment
        self.length = length  # header and payload


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
        # Every unsettled record journaled here, by id: where its bytes are read back from.
        self.journaled: dict[str, _Frame] = {}
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
        segments = _segments(self.journaled)
        if active is not None:
            segments.setdefault(id(active), active)
        for segment in segments.values():
            _close_reader(segment)
            if remove:
                self._unlink(segment.path)
        if remove:
            self.journaled.clear()
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

    def append(self, ids: Sequence[str], frames: Frames, *, recovered: int = 0) -> None:
        """Journal one batch (``frames`` = ``encode_batch`` of the records with ``ids``), or
        raise JournalUnwritable. After a failure every call tries again."""
        if not ids:
            return
        if not self.open():
            raise JournalUnwritable(self._refusal())
        parts, counts = frames
        size = len(parts[0]) + len(parts[1]) if len(counts) == 1 else sum(map(len, parts))
        active = self._active
        before: int | None = None  # the segment's end before this batch
        try:
            if active is None or active.size >= SEGMENT_BYTES or active.recovered != recovered:
                active = self._start(recovered)
            assert self._fd is not None
            before = active.size
            _write_all(self._fd, [*parts, _FRAME.pack(_COMMIT, size)], size + _FRAME.size)
        except OSError as exc:
            # This batch is refused (507): what of it was written has no commit mark, so no
            # init restores it, but it holds the space a full disk needs back. Cut back to
            # where it began (shrinking needs no space). The next batch starts a new segment.
            if before is not None and self._fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)
            self._close_active()
            self._fail("journal.write_failed", f"{type(exc).__name__}: {exc}")
            raise JournalUnwritable(self._refusal()) from exc
        if self.error is not None:
            self._log.warning("journal.resumed", dir=str(self.directory), after=self.error)
            self.error = None
        active.unsettled += len(ids)
        if len(counts) == 1:  # most batches
            self.journaled.update(dict.fromkeys(ids, _Frame(active, active.size, size)))
        else:
            offset = active.size
            start = 0
            for index, count in enumerate(counts):
                length = len(parts[2 * index]) + len(parts[2 * index + 1])
                frame = _Frame(active, offset, length)
                self.journaled.update(dict.fromkeys(ids[start:start + count], frame))
                offset += length
                start += count
        active.size += size + _FRAME.size

    def settled(self, record_ids: Iterable[str]) -> None:
        """Records reached their outcome: a segment goes once none of its records is left
        (never before: ``read_back`` relies on it)."""
        if not self.journaled:  # records that came through a ring (the ring journals them)
            return
        emptied: list[_Segment] = []
        pop = self.journaled.pop
        for record_id in record_ids:
            frame = pop(record_id, None)
            if frame is not None:
                segment = frame.segment
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
            _close_reader(segment)
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
            _write_all(self._fd, [header], len(header))
            segment.reader = os.open(segment.path, os.O_RDONLY)
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
        mine = {s.path for s in _segments(self.journaled).values()}
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
                segment = _read_segment(path)
            except Exception as exc:  # one bad file must not stop the rest, nor the extension
                quarantine(path, exc, self._log, kind="journal")
                continue
            kept.append(path)
            recovered = max(recovered, segment.recovered)
            if segment.torn:
                self._log.warning("journal.torn_tail", file=str(path), bytes=segment.torn,
                                  restored=len(segment.records),
                                  hint="a batch the process died writing: its handler got no "
                                       "202, so none of it is restored")
            for record in segment.records:
                records.setdefault(record.id, record)
        return Leftovers(list(records.values()), kept, recovered)

    def discard(self, files: Iterable[Path]) -> None:
        """Leftover files whose records are journaled again (or settled)."""
        for path in files:
            self._unlink(path)

    # -- reading -------------------------------------------------------------------------

    def read_back(self, record_ids: Sequence[str]) -> tuple[dict[str, KeyValue], dict[str, str]]:
        """The key and value each of ``record_ids`` was journaled with, read from the page
        cache: one ``pread`` per run of contiguous frames. Returns (found, why not) by id;
        a frame that cannot be read (gone, short, an I/O error, not what was written) is
        logged (``journal.read_failed``) and its ids are in the second map."""
        wanted: dict[_Frame | None, set[str]] = {}
        # Consecutive ids mostly share a frame: grouped per run of the same frame.
        for frame, group in itertools.groupby(zip(map(self.journaled.get, record_ids),
                                                  record_ids, strict=True), key=_ID):
            names = wanted.setdefault(frame, set())
            names.update(map(_SECOND, group))
        problems = dict.fromkeys(wanted.pop(None, ()), "not in the journal")
        found: dict[str, KeyValue] = {}
        frames = [f for f in wanted if f is not None]
        for run in _runs(sorted(frames, key=lambda f: (id(f.segment), f.offset))):
            for frame, why in _read_run_into(run, wanted, found):
                problems.update(dict.fromkeys(wanted[frame], why))
                self._log.error("journal.read_failed", file=str(frame.segment.path),
                                offset=frame.offset, records=len(wanted[frame]), error=why)
        return found, problems

    def status(self) -> dict[str, object]:
        return {"enabled": self.enabled, "dir": str(self.directory), "error": self.error,
                "segments": len(_segments(self.journaled)), "records": len(self.journaled)}


def _segments(frames: Mapping[str, _Frame]) -> dict[int, _Segment]:
    """The segments holding these frames, by identity."""
    return {id(f.segment): f.segment for f in frames.values()}


def _read_run_into(run: list[_Frame], wanted: Mapping[_Frame | None, set[str]],
                   found: dict[str, KeyValue]) -> Iterator[tuple[_Frame, str]]:
    """The wanted keys and values of a run of frames into ``found``, in one ``pread`` (frame
    by frame when that fails: what can be read still is); each frame that cannot be read,
    with why."""
    try:
        data: bytes | None = _read_run(run)
    except OSError:
        data = None
    for frame in run:
        try:
            base = run[0].offset if data is not None else frame.offset
            chunk = data if data is not None else _read_run([frame])
            _take(chunk, frame.offset - base, frame.length, wanted[frame], found)
        except Exception as exc:  # any: bytes not as written must not stop the pump
            yield frame, f"{type(exc).__name__}: {exc}"


def _runs(frames: list[_Frame]) -> Iterator[list[_Frame]]:
    """Frames (sorted by segment and offset) grouped into runs that lie back to back, or
    apart by no more than a commit mark (the next batch's first frame)."""
    run: list[_Frame] = []
    for frame in frames:
        if run and (frame.segment is not run[-1].segment
                    or frame.offset - run[-1].offset - run[-1].length > _FRAME.size):
            yield run
            run = []
        run.append(frame)
    if run:
        yield run


def _read_run(run: list[_Frame]) -> bytes:
    """The bytes of a run of frames, from its segment's read descriptor (short at the
    file's end: the caller finds the frames it misses)."""
    segment = run[0].segment
    if segment.reader is None:
        raise OSError(f"{segment.path} has no read descriptor")
    start = run[0].offset
    size = run[-1].offset + run[-1].length - start
    data = os.pread(segment.reader, size, start)
    while len(data) < size:  # a regular file answers whole unless at its end
        more = os.pread(segment.reader, size - len(data), start + len(data))
        if not more:
            break
        data += more
    return data


def _take(data: bytes, at: int, length: int, names: set[str],
          found: dict[str, KeyValue]) -> None:
    """The keys and values of ``names`` from the frame at ``at`` in ``data``."""
    if len(data) < at + length:
        raise ValueError(f"short read: {len(data) - at} of the frame's {length} bytes")
    magic, size = _FRAME.unpack_from(data, at)
    if magic != _MAGIC or size != length - _FRAME.size:
        raise ValueError("not the frame that was written there")
    entries = marshal.loads(memoryview(data)[at + _FRAME.size:at + length])
    if len(entries) == len(names):  # the whole frame, as a window mostly takes: C loops
        pairs = dict(zip(map(_ID, entries), map(_KEY_VALUE, entries), strict=True))
        if pairs.keys() != names:
            raise ValueError("records missing from their frame")
        found.update(pairs)
        return
    for entry in entries:
        if entry[0] in names:
            found[entry[0]] = (entry[2], entry[3])
    if not names <= found.keys():
        raise ValueError("records missing from their frame")


_ID = operator.itemgetter(0)  # of an ``encode`` entry (and of a pair)
_SECOND = operator.itemgetter(1)
_KEY_VALUE = operator.itemgetter(2, 3)


def _close_reader(segment: _Segment) -> None:
    if segment.reader is not None:
        with contextlib.suppress(OSError):
            os.close(segment.reader)
        segment.reader = None


_IOV_MAX = 1024  # buffers one writev takes (Linux)


def _write_all(fd: int, parts: list[bytes], size: int) -> None:
    """The buffers (``size`` bytes in all), in order: nearly always one ``writev``; what it
    did not take (a short write, more buffers than it takes) is written joined."""
    written = os.writev(fd, parts[:_IOV_MAX])
    if written < size:
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]


class SegmentRead(NamedTuple):
    records: list[Record]  # of its committed batches
    recovered: int  # its recovery count
    torn: int  # bytes after its last committed batch (a batch cut by a kill), skipped


def _read_segment(path: Path) -> SegmentRead:
    """Its committed batches' records: a batch the process died writing (never answered
    202) is skipped whole, with whatever follows it. Raises for anything else that does not
    parse, and for a segment of another version or Python."""
    data = path.read_bytes()
    end = data.find(b"\n")
    if end < 0:
        return SegmentRead([], 0, 0)  # killed before its header was whole: nothing answered
    header = json.loads(data[:end])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("no kafka-relay journal header on the first line")
    if header.get("version") != VERSION or header.get("python") != PYTHON:
        raise ValueError(f"journal version {header.get('version')!r} of Python "
                         f"{header.get('python')!r}, written by another kafka-relay release or "
                         f"Python runtime: this one reads version {VERSION} of Python {PYTHON} "
                         "only, so its records are not restored; deliver them by running the "
                         "release and runtime that wrote it on this KAFKA_RELAY_JOURNAL_DIR, or "
                         "replay them from their source")
    spans, committed = _committed_payloads(data, end + 1)
    records: list[Record] = []
    for start, stop in spans:
        records += decode(data[start:stop])
    return SegmentRead(records, int(header.get("recovered") or 0), len(data) - committed)
