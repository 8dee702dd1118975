"""The alternatives bench's side of the ring transport: its writer and its relays' socket.

The ring file is the layer's (``kafka_relay.ring``): the handler's process appends each
framed body to a file both processes map, then sends the relay one small message
(position, length) over a Unix ``SOCK_SEQPACKET`` socket and waits for one answer. The
bench's relays speak a smaller protocol than the layer's listener: a one-byte answer,
accepted (the relay validated the whole body; it owns the records) or refused with the
reason (nothing accepted), and a flush command.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka_relay.ring import ENTRY_HEAD, HEADER, REFUSED, Ring, RingFull, create, entry_size

__all__ = ["ENTRY_HEAD", "HEADER", "REFUSED", "Ring", "entry_size", "new_ring"]

MESSAGE = struct.Struct("<cQI")  # b"B", position, length: a body to take
FLUSH = b"F"
ANSWER_ACCEPTED = b"\x00"
ANSWER_REFUSED = b"\x01"  # then the reason, UTF-8
_BUSY_S = 0.8  # how long a writer waits for room, as the HTTP client backs off a 429


class RingError(Exception):
    """The relay refused a body (the reason), or the ring had no room for it in time."""


def new_ring(path: Path, capacity: int) -> Ring:
    """A new ring file of ``capacity`` data bytes, mapped."""
    fd = create(path, capacity)
    try:
        return Ring(fd, path)
    finally:
        os.close(fd)


class RingWriter:
    """The handler's side: append a body, tell the relay, wait for its answer."""

    def __init__(self, path: Path, relay: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ring = Ring.open(path)
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
        if answer[:1] != ANSWER_ACCEPTED:
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
