"""A shared-memory ring file: the handoff the alternatives bench measures against HTTP.

The handler's process appends each framed body (``protocol.encode_frames``) to a file both
processes map, then sends the relay one small message (position, length) over a Unix
``SOCK_SEQPACKET`` socket and waits for one answer: accepted (the relay validated the whole
body; it owns the records) or rejected with the reason (nothing accepted). The relay reads
the body in place. The file is also the crash journal: a body is in the page cache before
the relay is told of it, so it survives a SIGKILL of either process (not a kernel crash,
like the layer's journal: no fsync), and the header's consumed offset says how far every
record was settled; ``pending`` lists what a restarted relay produces again.

File: a 64-byte header (magic, version, capacity, written, consumed: little-endian, the
offsets logical, growing forever), then ``capacity`` bytes of entries. An entry is a u32
length and the body, padded to 8 bytes; an entry that would pass the end of the data starts
at its beginning instead, after a ``SKIP`` length. A rejected entry's length gets the
``REJECTED`` bit, so a restart does not produce it. One writer per file: a handler process
maps a ring of its own (several concurrent handlers: several rings).
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MAGIC = b"KRR1"
VERSION = 1
HEADER = 64
_HEAD = struct.Struct("<4sIQQQ")  # magic, version, capacity, written, consumed
_WRITTEN_AT = 16
_CONSUMED_AT = 24
_OFFSET = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
SKIP = 0xFFFFFFFF  # the rest of the data is unused: the next entry is at its start
REJECTED = 0x80000000  # on a length: the relay refused this body (never produced)
MESSAGE = struct.Struct("<cQI")  # b"B", position, length: a body to take
FLUSH = b"F"
ACCEPTED = b"\x00"
REFUSED = b"\x01"  # then the reason, UTF-8
_BUSY_S = 0.8  # how long a writer waits for room, as the HTTP client backs off a 429


class RingError(Exception):
    """The relay refused a body (the reason), or the ring had no room for it in time."""


class RingFull(Exception):
    """No room for the entry until the relay consumes more."""


def entry_size(length: int) -> int:
    """Bytes an entry of a ``length``-byte body takes (its length word, padded to 8)."""
    return (_LENGTH.size + length + 7) & ~7


def create(path: Path, capacity: int) -> None:
    """A new ring file of ``capacity`` data bytes (a multiple of 8)."""
    if capacity % 8 or capacity < 64:
        raise ValueError("the capacity must be a multiple of 8, at least 64")
    with open(path, "xb") as out:
        # Every block allocated now: a sparse file would meet a full disk as SIGBUS in the
        # writer's first store to an unbacked page, not as an error here.
        os.posix_fallocate(out.fileno(), 0, HEADER + capacity)
        out.write(_HEAD.pack(MAGIC, VERSION, capacity, 0, 0))


class Ring:
    """The mapped file, as either side sees it."""

    def __init__(self, path: Path) -> None:
        with open(path, "r+b") as handle:
            self.map = mmap.mmap(handle.fileno(), 0)
        magic, version, self.capacity, _, _ = _HEAD.unpack_from(self.map, 0)
        if (magic, version) != (MAGIC, VERSION) or len(self.map) != HEADER + self.capacity:
            self.map.close()
            raise ValueError(f"{path} is not a ring file of version {VERSION}")
        self.view = memoryview(self.map)

    @property
    def written(self) -> int:
        return int(_OFFSET.unpack_from(self.map, _WRITTEN_AT)[0])

    @property
    def consumed(self) -> int:
        return int(_OFFSET.unpack_from(self.map, _CONSUMED_AT)[0])

    def body(self, position: int, length: int) -> memoryview:
        """The body at logical ``position``, in place (no copy)."""
        at = HEADER + position % self.capacity + _LENGTH.size
        return self.view[at:at + length]

    def settle(self, end: int) -> None:
        """Every entry before logical ``end`` reached its outcome (the relay's side)."""
        _OFFSET.pack_into(self.map, _CONSUMED_AT, end)

    def reject(self, position: int) -> None:
        """Mark the entry at ``position`` refused, so a restart never produces it."""
        at = HEADER + position % self.capacity
        (length,) = _LENGTH.unpack_from(self.map, at)
        _LENGTH.pack_into(self.map, at, length | REJECTED)

    def append(self, body: bytes) -> tuple[int, int]:
        """Write ``body`` as the next entry: its (position, end). RingFull when the relay has
        not consumed enough yet; RingError when it can never fit."""
        length = len(body)
        size = entry_size(length)
        if size > self.capacity or length >= REJECTED:
            raise RingError(f"a {length}-byte body does not fit a ring of {self.capacity} bytes")
        position = self.written
        at = position % self.capacity
        skip = self.capacity - at if at + size > self.capacity else 0
        if position + skip + size - self.consumed > self.capacity:
            raise RingFull
        if skip:
            _LENGTH.pack_into(self.map, HEADER + at, SKIP)
            position += skip
            at = 0
        _LENGTH.pack_into(self.map, HEADER + at, length)
        start = HEADER + at + _LENGTH.size
        self.map[start:start + length] = body
        # Only now is the entry visible (to the relay, and to a restart).
        _OFFSET.pack_into(self.map, _WRITTEN_AT, position + size)
        return position, position + size

    def pending(self) -> Iterator[tuple[int, memoryview]]:
        """(end, body) of every accepted entry after the consumed offset: what a relay that
        starts over this file must still produce."""
        position, written = self.consumed, self.written
        while position < written:
            at = position % self.capacity
            (length,) = _LENGTH.unpack_from(self.map, HEADER + at)
            if length == SKIP:
                position += self.capacity - at
                continue
            size = length & ~REJECTED
            end = position + entry_size(size)
            if not length & REJECTED:
                yield end, self.body(position, size)
            position = end

    def close(self) -> None:
        self.view.release()
        self.map.close()


class RingWriter:
    """The handler's side: append a body, tell the relay, wait for its answer."""

    def __init__(self, path: Path, relay: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ring = Ring(path)
        self._clock = clock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(relay)

    def send(self, body: bytes) -> int:
        """Hand ``body`` over: returns the end of its entry once the relay accepted it, raises
        RingError when it refused it (nothing of it accepted) or no room came in time."""
        deadline = self._clock() + _BUSY_S
        while True:
            try:
                position, end = self.ring.append(body)
                break
            except RingFull:
                if self._clock() > deadline:
                    raise RingError(f"the ring stayed full for {_BUSY_S} s: nothing "
                                    "accepted") from None
                time.sleep(0.001)
        self.sock.send(MESSAGE.pack(b"B", position, len(body)))
        answer = self.sock.recv(65536)
        if answer[:1] != ACCEPTED:
            raise RingError(answer[1:].decode(errors="replace") or "the relay closed the ring")
        return end

    def flush(self) -> int:
        """Ask the relay to deliver everything; how many records it still holds after."""
        self.sock.send(FLUSH)
        return int(self.sock.recv(64)[1:])

    def close(self) -> None:
        self.sock.close()
        self.ring.close()


def relay_socket(path: str) -> socket.socket:
    """The relay's listening socket at ``path``."""
    with_path = Path(path)
    if with_path.exists():
        os.unlink(with_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    return listener


Frame = tuple[Any, Any, Any, tuple[tuple[Any, Any], ...], "int | None"]


def decode_frames(body: Any) -> list[Frame]:
    """The lean relay's reader: a framed body's (topic, key, value, headers, timestamp) as
    slices of ``body`` (views over a view), lengths checked before any slice by the layer's
    own rules; ValueError names the record. The layer's reader
    (``handoff.schema.framed_records``) builds ``Record``s instead, with every field rule."""
    from kafka_relay import protocol as p  # noqa: PLC0415 - the relay process only
    from kafka_relay.handoff import schema  # noqa: PLC0415

    size = len(body)
    if size < p.FRAMES_HEAD.size:
        raise ValueError("a framed body needs its header")
    magic, count = p.FRAMES_HEAD.unpack_from(body, 0)
    if magic != p.FRAMES_MAGIC or count > (size - p.FRAMES_HEAD.size) // p.FRAME_RECORD.size:
        raise ValueError("not a framed body, or it announces more records than it holds")
    frames: list[Frame] = []
    pos, fixed = p.FRAMES_HEAD.size, p.FRAME_RECORD.size
    for index in range(count):
        if pos + fixed > size:
            raise ValueError(f"record {index}: truncated")
        flags, topic_len, key_len, value_len, header_count, timestamp = (
            p.FRAME_RECORD.unpack_from(body, pos))
        if ((flags & ~p.FRAME_FLAGS) or (topic_len and not flags & p.FLAG_TOPIC)
                or (key_len and not flags & p.FLAG_KEY) or (value_len and flags & p.FLAG_VALUE_NULL)
                or (timestamp and not flags & p.FLAG_TIMESTAMP)):
            problem = schema._flag_problem(flags, topic_len, key_len, value_len, timestamp)
            raise ValueError(f"record {index}: {problem}")
        start = pos + fixed
        key_at, value_at = start + topic_len, start + topic_len + key_len
        pos = value_end = value_at + value_len
        if pos > size:
            raise ValueError(f"record {index}: topic, key and value pass the end of the body")
        headers: tuple[tuple[Any, Any], ...] = ()
        if header_count:
            try:
                headers, pos = schema._read_headers(body, pos, header_count, index)
            except schema.InvalidRequest as exc:
                raise ValueError(str(exc)) from None
        frames.append((body[start:key_at] if flags & p.FLAG_TOPIC else None,
                       body[key_at:value_at] if flags & p.FLAG_KEY else None,
                       None if flags & p.FLAG_VALUE_NULL else body[value_at:value_end],
                       headers, timestamp if flags & p.FLAG_TIMESTAMP else None))
    if pos != size:
        raise ValueError("bytes after the last record")
    return frames
