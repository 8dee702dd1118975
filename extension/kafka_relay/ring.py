"""The ring file and its messages: the handoff's shared-memory transport. Stdlib only.

A handler process appends each framed body (``protocol.encode_frames``) to a ring file of
its own, then tells the extension where it is with one small message on a Unix
``SOCK_SEQPACKET`` connection and waits for one answer: the HTTP status and JSON body the
``/v1/records`` route would have answered, so both transports raise the same exceptions.
The extension reads the body in place. The file is also the crash journal of the records
it carries: a body is in the page cache before the extension is told of it, so it survives
a SIGKILL of either process (not a kernel crash, like the journal: no fsync); the header's
consumed offset says how far every record was settled, and each entry's state word says
whether the extension took it (``ACCEPTED``), refused it (``REFUSED``) or not yet answered.

File: a 64-byte header (magic, version, capacity, written, consumed, recoveries;
little-endian, the offsets logical and growing forever), then ``capacity`` bytes of entries.
An entry is a u32 state word (the body's length and the state bits), a u16 request id length
and two zero bytes, the request id (UTF-8: the invocation that handed the body over, so a
takeover still counts its records for it), then the body, padded to 8 bytes; an entry that
would pass the end of the data starts at its beginning instead, after a ``SKIP`` word. One
writer per file, holding a ``flock`` on it while it lives: a file nobody holds is a dead
writer's, which the extension takes over. Version 1 entries had no request id (a u32 state
word, then the body): the extension still takes such a file over (its records counted
under no request), and refuses its writer's HELLO.

Messages (the first on a connection is HELLO; every message gets one answer):
HELLO  b"H", u16 token length, the token, the ring file's path (UTF-8)
BODY   b"B", u64 position, u32 length
answer u16 status, u32 JSON length, then the JSON, split over as many messages as it takes
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from kafka_relay.protocol import (
    FLAG_KEY,
    FLAG_VALUE_NULL,
    FRAME_HEADER,
    FRAME_RECORD,
    FRAMES_HEAD,
)

RING_ENV = "KAFKA_RELAY_RING"  # "false": the client hands bodies over HTTP only
RING_DIR_ENV = "KAFKA_RELAY_RING_DIR"
MAGIC = b"KRR1"
VERSION = 2
OLD_VERSION = 1  # entries without a request id: read for a takeover, never written
HEADER = 64
# The data bytes of a ring. A handler process has one (16 per vCPU under Managed Instances,
# all in /tmp, 512 MB by default): 4 MiB holds ~40 bodies of 100 x 1 KB; a body that cannot
# take half of it goes over HTTP, so a full ring is a stalled relay, not a large body.
CAPACITY = 4 * 1024 * 1024
_HEAD = struct.Struct("<4sIQQQI")  # magic, version, capacity, written, consumed, recoveries
_WRITTEN_AT = 16
_CONSUMED_AT = 24
_RECOVERIES_AT = 32
_OFFSET = struct.Struct("<Q")
_WORD = struct.Struct("<I")
_ENTRY = struct.Struct("<IH2x")  # state word, request id length; then the id, then the body
ENTRY_HEAD = _ENTRY.size  # an entry's head: its request id (or, without one, its body) follows
MAX_REQUEST_ID = 0xFFFF  # bytes; a body whose request id is longer goes over HTTP
SKIP = 0xFFFFFFFF  # the rest of the data is unused: the next entry is at its start
REFUSED = 0x80000000  # on a state word: refused (never produced), or withdrawn by its writer
ACCEPTED = 0x40000000  # on a state word: the extension owns the body's records
LENGTH = 0x3FFFFFFF
HELLO = b"H"
BODY = b"B"
_HELLO = struct.Struct("<cH")
_BODY = struct.Struct("<cQI")
_ANSWER = struct.Struct("<HI")
MAX_MESSAGE = 64 * 1024  # one message of an answer, and the largest HELLO or BODY
PREFIX = "kafka-relay-ring-"
_ATTEMPTS = 3  # announcements of one body after a lost answer
_RETRY_LISTENER_S = 10.0  # no listener answered: bodies go over HTTP this long
GONE = 410  # the extension was restored from a snapshot since the ring was made
REFUSED_ALREADY = 409  # an entry announced again after its refusal's answer was lost


class RingFull(Exception):
    """No room for the entry until the extension consumes more."""


def ring_dir(env: Mapping[str, str]) -> Path:
    """Where rings live: ``KAFKA_RELAY_RING_DIR``, else ``$TMPDIR/kafka-relay-ring``."""
    return Path(env.get(RING_DIR_ENV) or Path(env.get("TMPDIR") or "/tmp") / "kafka-relay-ring")


def socket_address(port: int) -> str:
    """The extension's socket for the handoff port ``port``, in the abstract namespace (no
    file to leak or to outlive it, no path-length limit); its network namespace is the
    handoff port's, which both sides share."""
    return f"\0kafka-relay-ring-{port}"


def ring_name(port: int, tag: str) -> str:
    """A ring's file name: the handoff port of its extension and the writer's random tag."""
    return f"{PREFIX}{port}-{tag}.ring"


def tag_of(path: Path, port: int) -> str | None:
    """The tag of a ring file of the extension on ``port``; None for any other file."""
    name, head = path.name, f"{PREFIX}{port}-"
    tag = name[len(head):-5]
    if name.startswith(head) and name.endswith(".ring") and len(tag) == 16 and all(
            c in "0123456789abcdef" for c in tag):
        return tag
    return None


def record_ids(tag: str, position: int, count: int) -> list[str]:
    """The ids of a body's records, from where it is (so a record produced again after a
    crash carries the ``x-relay-id`` of its first try): ``tag-position-index``, the position
    in hex. One ``%`` per id in C (``map``): ~70 ns per id less than an f-string apiece."""
    return list(map(f"{tag}-{position:x}-%d".__mod__, range(count)))


def body_records(body: bytes) -> int:
    """The record count a framed body announces (0 when it has no header)."""
    return int(FRAMES_HEAD.unpack_from(body, 0)[1]) if len(body) >= FRAMES_HEAD.size else 0


def entry_size(length: int, id_length: int = 0, head: int = ENTRY_HEAD) -> int:
    """Bytes an entry of a ``length``-byte body takes (its head, the ``id_length``-byte
    request id, padded to 8; ``head``: a version 1 entry's is its state word alone)."""
    return (head + id_length + length + 7) & ~7


def fits(length: int, id_length: int = 0, capacity: int = CAPACITY) -> bool:
    """Whether a body goes through the ring (else over HTTP): half of it at most."""
    return id_length <= MAX_REQUEST_ID and entry_size(length, id_length) <= capacity // 2


def create(path: Path, capacity: int = CAPACITY) -> int:
    """A new ring file of ``capacity`` data bytes (a multiple of 8): its descriptor, open
    for reading and writing."""
    if capacity % 8 or capacity < 64:
        raise ValueError("the capacity must be a multiple of 8, at least 64")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # Every block allocated now: a sparse file would meet a full disk as SIGBUS in the
        # writer's first store to an unbacked page, not as an error here.
        os.posix_fallocate(fd, 0, HEADER + capacity)
        os.pwrite(fd, _HEAD.pack(MAGIC, VERSION, capacity, 0, 0, 0), 0)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def _id_length(ring_map: mmap.mmap, head: int, at: int) -> int:
    """The request id's length in the entry at data offset ``at`` of a ring's mapping
    (``head``: its entries' head size; a version 1 entry has no request id)."""
    return int(_ENTRY.unpack_from(ring_map, HEADER + at)[1]) if head == ENTRY_HEAD else 0


class Ring:
    """The file, as either side sees it: offsets and state words through a mapping, bodies
    with ``pwrite``/``pread``, so neither process keeps the bodies' pages in its own
    resident memory (they are page cache, like the journal's)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.path = path
        self.map = mmap.mmap(fd, 0)
        magic, version, capacity, written, consumed, _ = _HEAD.unpack_from(self.map, 0)
        self.version: int = version
        self.capacity: int = capacity
        if magic != MAGIC or self.version not in (VERSION, OLD_VERSION) or len(
                self.map) != HEADER + self.capacity or self.capacity % 8 or self.capacity < 64 \
                or consumed % 8 or not 0 <= written - consumed <= self.capacity:
            self.map.close()
            raise ValueError(f"{path} is not a ring file of version {VERSION} (or "
                             f"{OLD_VERSION})")
        # Where an entry's request id starts (a version 1 entry has none: its body starts there).
        self._head = ENTRY_HEAD if self.version == VERSION else _WORD.size
        self._fd = os.dup(fd)

    @classmethod
    def open(cls, path: Path) -> Ring:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            return cls(fd, path)
        finally:
            os.close(fd)

    @property
    def written(self) -> int:
        return int(_OFFSET.unpack_from(self.map, _WRITTEN_AT)[0])

    @property
    def consumed(self) -> int:
        return int(_OFFSET.unpack_from(self.map, _CONSUMED_AT)[0])

    def state(self, position: int) -> int:
        """The state word of the entry at logical ``position``."""
        return int(_WORD.unpack_from(self.map, HEADER + position % self.capacity)[0])

    def _body_at(self, position: int) -> int:
        """The file offset of the body of the entry at logical ``position`` (after its
        request id)."""
        at = position % self.capacity
        return HEADER + at + self._head + _id_length(self.map, self._head, at)

    def request_id(self, position: int) -> str | None:
        """The request id the entry at logical ``position`` was written with."""
        raw = self.map[HEADER + position % self.capacity + self._head:self._body_at(position)]
        return raw.decode(errors="replace") or None

    def body(self, position: int, length: int) -> bytes:
        """The body at logical ``position``."""
        data = os.pread(self._fd, length, self._body_at(position))
        if len(data) != length:
            raise ValueError(f"{self.path} ends inside the body at {position}")
        return data

    def entry(self, position: int, length: int) -> int | None:
        """The end of the entry at ``position`` when a ``length``-byte body was written
        there (a message names it), else None."""
        if not self.consumed <= position < self.written or position % 8:
            return None
        if self.state(position) & LENGTH != length or length > LENGTH:
            return None
        at = position % self.capacity
        size = entry_size(length, _id_length(self.map, self._head, at), self._head)
        end = position + size
        return end if end <= self.written and at + size <= self.capacity else None

    def read_into(self, position: int, buffer: mmap.mmap) -> mmap.mmap:
        """The body at logical ``position``, read into ``buffer`` (its length)."""
        if os.preadv(self._fd, [buffer], self._body_at(position)) != len(buffer):
            raise ValueError(f"{self.path} ends inside the body at {position}")
        return buffer

    def mark(self, position: int, bit: int) -> None:
        """Set ``ACCEPTED`` or ``REFUSED`` on the entry at ``position``."""
        at = HEADER + position % self.capacity
        _WORD.pack_into(self.map, at, _WORD.unpack_from(self.map, at)[0] | bit)

    def settle(self, end: int) -> None:
        """Every entry before logical ``end`` reached its outcome (the extension's side)."""
        _OFFSET.pack_into(self.map, _CONSUMED_AT, end)

    def append(self, body: bytes, request_id: bytes = b"") -> tuple[int, int]:
        """Write ``body`` as the next entry, with the ``request_id`` (UTF-8) it was handed over
        for: its (position, end). RingFull when the extension has not consumed enough yet."""
        length, id_length = len(body), len(request_id)
        size = entry_size(length, id_length)
        if size > self.capacity or length > LENGTH or id_length > MAX_REQUEST_ID:
            raise ValueError(f"a {length}-byte body does not fit a ring of {self.capacity} bytes")
        position = self.written
        at = position % self.capacity
        skip = self.capacity - at if at + size > self.capacity else 0
        if position + skip + size - self.consumed > self.capacity:
            raise RingFull
        if skip:
            _WORD.pack_into(self.map, HEADER + at, SKIP)
            position += skip
            at = 0
        if os.pwritev(self._fd, [request_id, body], HEADER + at + ENTRY_HEAD) != (
                id_length + length):
            raise OSError(f"a short write to {self.path}")
        _ENTRY.pack_into(self.map, HEADER + at, length, id_length)
        # Only now is the entry visible (to the extension, and to a takeover).
        _OFFSET.pack_into(self.map, _WRITTEN_AT, position + size)
        return position, position + size

    def entries(self, start: int | None = None) -> Iterator[tuple[int, int, int]]:
        """(position, state word, end) of every entry from ``start`` (the consumed offset)
        to the written one."""
        position, written = self.consumed if start is None else start, self.written
        while position < written:
            at = position % self.capacity
            (word,) = _WORD.unpack_from(self.map, HEADER + at)
            if word == SKIP:
                position += self.capacity - at
                continue
            end = position + entry_size(word & LENGTH, _id_length(self.map, self._head, at),
                                        self._head)
            yield position, word, end
            position = end

    def close(self) -> None:
        self.map.close()
        os.close(self._fd)


def count_takeover(ring: Ring) -> int:
    """Count one more takeover of ``ring`` by an extension; how many now."""
    count = int(_WORD.unpack_from(ring.map, _RECOVERIES_AT)[0]) + 1
    _WORD.pack_into(ring.map, _RECOVERIES_AT, count)
    return count


def pending(ring: Ring) -> Iterator[tuple[int, int, str | None, bytes]]:
    """(position, end, request id, body) of every accepted entry after the consumed offset:
    what an extension that takes the file over must still produce."""
    for position, word, end in ring.entries():
        if word & ACCEPTED and not word & REFUSED:
            yield position, end, ring.request_id(position), ring.body(position, word & LENGTH)


def hello(token: str | None, path: Path) -> bytes:
    raw = (token or "").encode()
    return _HELLO.pack(HELLO, len(raw)) + raw + os.fsencode(path)


def read_hello(message: bytes) -> tuple[str, Path]:
    """(token, ring path) of a HELLO; ValueError when it is none."""
    if message[:1] != HELLO or len(message) < _HELLO.size:
        raise ValueError("the first message on a ring connection must be HELLO")
    _, size = _HELLO.unpack_from(message, 0)
    start = _HELLO.size
    if len(message) < start + size:
        raise ValueError("a HELLO shorter than its token")
    return (message[start:start + size].decode(errors="replace"),
            Path(os.fsdecode(message[start + size:])))


def body_message(position: int, length: int) -> bytes:
    return _BODY.pack(BODY, position, length)


def read_body_message(message: bytes) -> tuple[int, int]:
    """(position, length) of a BODY; ValueError when it is none."""
    if message[:1] != BODY or len(message) != _BODY.size:
        raise ValueError("not a BODY message")
    _, position, length = _BODY.unpack(message)
    return position, length


def answer(status: int, data: bytes) -> list[bytes]:
    """An answer as the messages that carry it."""
    first = _ANSWER.pack(status, len(data)) + data[:MAX_MESSAGE - _ANSWER.size]
    rest = range(MAX_MESSAGE - _ANSWER.size, len(data), MAX_MESSAGE)
    return [first, *(data[at:at + MAX_MESSAGE] for at in rest)]


def answer_head(message: bytes) -> tuple[int, int, bytes]:
    """(status, JSON length, the JSON's first part) of an answer's first message."""
    if len(message) < _ANSWER.size:
        raise ValueError("an answer shorter than its head")
    status, length = _ANSWER.unpack_from(message, 0)
    return status, length, message[_ANSWER.size:]


def payloads(body: bytes) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of each record of a body already validated (the handoff's reader read
    it), as the records were built from it; ValueError when it does not read so."""
    out: list[tuple[bytes | None, bytes | None]] = []
    count = body_records(body)
    pos, fixed, size = FRAMES_HEAD.size, FRAME_RECORD.size, len(body)
    try:
        for _ in range(count):
            flags, topic_len, key_len, value_len, header_count, _ts = FRAME_RECORD.unpack_from(
                body, pos)
            key_at = pos + fixed + topic_len
            value_at = key_at + key_len
            pos = value_end = value_at + value_len
            for _header in range(header_count):
                name_len, header_len = FRAME_HEADER.unpack_from(body, pos)
                pos += FRAME_HEADER.size + name_len + header_len
            out.append((bytes(body[key_at:value_at]) if flags & FLAG_KEY else None,
                        None if flags & FLAG_VALUE_NULL else bytes(body[value_at:value_end])))
    except struct.error as exc:
        raise ValueError(f"a body that does not read as it was validated ({exc})") from None
    if pos != size:
        raise ValueError("a body that does not read as it was validated")
    return out


class Writer:
    """A handler process's side: its ring (created at its first body, in the process that
    sends: a fork or a restored snapshot makes a new one under a name drawn then) and its
    connection. Thread-safe: one body at a time."""

    def __init__(self, directory: Path, port: int, token: str | None, *,
                 clock: Callable[[], float]) -> None:
        self._directory = directory
        self._port = port
        self._token = token
        self._clock = clock
        self._lock = threading.Lock()
        self._pid = 0
        self._ring: Ring | None = None
        self._fd = -1
        self._tag = ""
        self._sock: socket.socket | None = None
        self._off_until = 0.0  # no listener answered: HTTP until then

    def exchange(self, body: bytes, request_id: str | None, *,
                 deadline: float) -> tuple[int, bytes] | None:
        """Hand ``body`` over: the status and JSON the extension answered, or None when no
        ring listener answers here or the ring has no room (send it over HTTP)."""
        rid = (request_id or "").encode()
        if not fits(len(body), len(rid)) or self._clock() < self._off_until:
            return None
        if self._pid and self._pid != os.getpid():
            self._lock = threading.Lock()  # a fork's copy may be held by a thread not copied
        with self._lock:
            if self._pid != os.getpid():
                self._forget()  # inherited from the parent: its ring and connection
            for _ring in range(2):
                try:
                    refused = self._connect(deadline)
                except OSError:
                    self._off_until = self._clock() + _RETRY_LISTENER_S
                    self._close()
                    return None
                if refused is not None and refused[0] != GONE:
                    return refused
                handed = self._hand_over(body, rid,
                                         deadline) if refused is None else refused
                if handed is None or handed[0] != GONE:
                    return handed
                # Restored from a snapshot: the ring is every copy's; one of our own now.
                self._close()
                self._forget()
            return None

    def _hand_over(self, body: bytes, request_id: bytes,
                   deadline: float) -> tuple[int, bytes] | None:
        """None: not taken (no room in the ring, or withdrawn after lost answers)."""
        ring = self._ring
        assert ring is not None
        # No room: the ring's bodies wait for the broker (an outage, a backlog). HTTP takes
        # this one at once, into memory, the journal or the outage spool, as without a ring.
        position = _append(ring, body, request_id)
        if position is None:
            return None
        for _attempt in range(_ATTEMPTS):
            try:
                if self._sock is None and self._connect(deadline) is not None:
                    break
                assert self._sock is not None
                self._sock.settimeout(max(0.001, deadline - self._clock()))
                self._sock.send(body_message(position, len(body)))
                handed = self._answer(self._sock)
                if handed[0] != REFUSED_ALREADY:
                    return handed
                # Refused after its answer was lost and before this announcement: as over
                # HTTP, where a refusal is not remembered, it is handed over afresh.
            except OSError:
                self._close()
                # The answer was lost: the entry's state says what became of the body.
                word = ring.state(position)
                if word & ACCEPTED:
                    return 202, _accepted(self._tag, position, body)
                if not word & REFUSED:
                    continue  # not answered yet: announced again
            placed = _append(ring, body, request_id)  # nothing taken
            if placed is None:
                break
            position = placed
        if ring.state(position) & ACCEPTED:
            return 202, _accepted(self._tag, position, body)
        ring.mark(position, REFUSED)  # withdrawn: nobody may produce it now
        return None

    def _connect(self, deadline: float) -> tuple[int, bytes] | None:
        """Connected and said hello (the ring made first when there is none): None, else the
        refusal to answer the body with (OSError: no listener)."""
        if self._sock is not None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(max(0.001, deadline - self._clock()))
            sock.connect(socket_address(self._port))
            if self._ring is None:
                self._create()
            assert self._ring is not None
            sock.send(hello(self._token, self._ring.path))
            status, data = self._answer(sock)
        except BaseException:
            sock.close()
            raise
        if status == 200:
            self._sock = sock
            return None
        sock.close()
        self._discard()  # nothing in it; before a snapshot, not kept in it
        if status in (401, 503, GONE):  # the token, before or after a restore
            return status, data
        raise ConnectionRefusedError(f"the ring listener refused this ring ({status})")

    def _create(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        tag = os.urandom(8).hex()
        path = self._directory / ring_name(self._port, tag)
        draft = path.with_name(f".{path.name}")
        fd = create(draft)
        # Held while the process lives; named only once held, so the extension never takes
        # over a ring whose writer is alive.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(draft, path)
        self._ring, self._fd, self._tag, self._pid = Ring(fd, path), fd, tag, os.getpid()

    @staticmethod
    def _answer(sock: socket.socket) -> tuple[int, bytes]:
        first = sock.recv(MAX_MESSAGE)
        if not first:
            raise ConnectionResetError("the ring listener closed the connection")
        status, length, data = answer_head(first)
        while len(data) < length:
            part = sock.recv(MAX_MESSAGE)
            if not part:
                raise ConnectionResetError("the ring listener closed the connection")
            data += part
        return status, data

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _discard(self) -> None:
        """Delete the ring when nothing was ever written to it."""
        if self._ring is not None and not self._ring.written:
            with contextlib.suppress(OSError):
                os.unlink(self._ring.path)
            self._ring.close()
            os.close(self._fd)
            self._ring = None

    def _forget(self) -> None:
        """After a fork (the parent's ring and connection are the parent's) or a restore (the
        ring is every copy's): a new ring at the next body."""
        if self._sock is not None:
            self._sock.close()  # the parent's connection stays: the socket is still its
            self._sock = None
        if self._ring is not None:
            self._ring.close()
            os.close(self._fd)  # the parent's flock stays: the open file is still its
            self._ring = None
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the connection; the ring too once the extension consumed all of it."""
        with self._lock:
            self._close()
            ring = self._ring
            if ring is not None and ring.consumed == ring.written:
                with contextlib.suppress(OSError):
                    os.unlink(ring.path)
                ring.close()
                os.close(self._fd)
                self._ring = None


def _accepted(tag: str, position: int, body: bytes) -> bytes:
    """The answer of a body the extension took when its answer was lost."""
    ids = record_ids(tag, position, body_records(body))
    return json.dumps({"accepted": len(ids), "ids": ids}).encode()


def _append(ring: Ring, body: bytes, request_id: bytes) -> int | None:
    """The new entry's position; None when the ring has no room for it."""
    try:
        return ring.append(body, request_id)[0]
    except RingFull:
        return None
