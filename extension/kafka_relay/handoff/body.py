"""Read one HTTP request body exactly: Content-Length or chunked, within a limit and a deadline.

A body that ends early, is malformed or too slow raises ``BodyError`` before any
record is parsed, so nothing of it is accepted. After an error the connection
must be closed (the stream position is unknown).

A large Content-Length body is read in place into its own anonymous mapping, unmapped as
soon as the request lets go of it: read as chunks and joined, it existed twice, and the heap
glibc grew for it stayed resident under the records that were allocated after it (the
memory a stalled broker's pending records cost). After such a body the server also hands
the heap's free pages back (``trim_heap``): the request's other transient copies (frames,
the journal frame, resized tables) would otherwise stay resident the same way.
"""

from __future__ import annotations

import functools
import mmap
import re
import socket
import time
from collections.abc import Callable
from io import BufferedIOBase

from kafka_relay.httpwire import Headers

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_TRAILERS = 64
MAPPED_BODY_BYTES = 256 * 1024  # from this size on, a body is read into a mapping of its own
_READ_CHUNK = 1 << 20

# What a body is: bytes, or the mapping it was read into (a buffer: slices are bytes).
Body = bytes | mmap.mmap


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``, ~0.3 ms on a
    fragmented 20 MB heap); False where there is none."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes  # noqa: PLC0415 - ~6 ms, once the first large body came, not at start

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):  # no ctypes, or not glibc (musl)
        return None
    return trim


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def too_large(length: int, limit: int, hint: str) -> BodyError:
    """The 413 of a ``length``-byte body over ``limit`` (either transport's)."""
    return BodyError(413, f"body of {length} bytes is over the {limit}-byte limit{hint}")


def read_body(
    headers: Headers,
    rfile: BufferedIOBase,
    sock: socket.socket,
    *,
    limit: int,
    too_large_hint: str,
    deadline_s: float,
    idle_timeout_s: float,
) -> Body:
    reader = _Reader(rfile, sock, time.monotonic() + deadline_s, idle_timeout_s)
    try:
        try:
            return reader.body(headers, limit, too_large_hint)
        finally:
            sock.settimeout(idle_timeout_s)
    except TimeoutError as exc:
        raise BodyError(408, "the request body did not arrive in time: nothing accepted; "
                             "send it again") from exc


class _Reader:
    def __init__(self, rfile: BufferedIOBase, sock: socket.socket, deadline: float,
                 idle_timeout_s: float) -> None:
        self._rfile = rfile
        self._sock = sock
        self._deadline = deadline
        self._idle_timeout_s = idle_timeout_s

    def body(self, headers: Headers, limit: int, hint: str) -> Body:
        encoding = (headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding:
            if encoding != "chunked":
                raise BodyError(501, f"Transfer-Encoding {encoding!r} is not supported: send "
                                     "a Content-Length or a chunked body")
            return self._chunked(limit, hint)
        raw = headers.get("Content-Length")
        if raw is None:
            return b""
        if not (raw.strip().isascii() and raw.strip().isdigit()):
            raise BodyError(400, f"Content-Length {raw!r} is not a byte count")
        length = int(raw)
        if length > limit:
            raise too_large(length, limit, hint)
        if length >= MAPPED_BODY_BYTES:
            return self._mapped(length)
        return self._exactly(length)

    def _mapped(self, length: int) -> mmap.mmap:
        body = mmap.mmap(-1, length)
        got = 0
        with memoryview(body) as view:
            while got < length:
                self._arm()
                read = self._rfile.readinto1(view[got:got + _READ_CHUNK])
                if not read:
                    break
                got += read
        if got < length:
            body.close()
            raise BodyError(400, f"the body ended after {got} of {length} announced bytes: "
                                 "nothing accepted; send the whole body")
        return body

    def _exactly(self, length: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < length:
            self._arm()
            chunk = self._rfile.read1(min(length - got, _READ_CHUNK))
            if not chunk:
                raise BodyError(400, f"the body ended after {got} of {length} announced bytes: "
                                     "nothing accepted; send the whole body")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _chunked(self, limit: int, hint: str) -> bytes:
        parts: list[bytes] = []
        total = 0
        while size := self._chunk_size():
            total += size
            if total > limit:
                raise BodyError(413, f"chunked body over the {limit}-byte limit{hint}")
            parts.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise BodyError(400, "malformed chunked body: a chunk is not followed by CRLF")
        for _ in range(_MAX_TRAILERS):  # trailer fields, ignored
            self._arm()
            line = self._rfile.readline(8192)
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)
            if not line.endswith(b"\n"):
                break
        raise BodyError(400, "malformed chunked body: the trailer section does not end")

    def _chunk_size(self) -> int:
        self._arm()
        line = self._rfile.readline(1024)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not _HEX.fullmatch(size_text):
            raise BodyError(400, f"malformed chunked body: bad chunk size line {line[:40]!r}")
        return int(size_text, 16)

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("body deadline")
        self._sock.settimeout(min(remaining, self._idle_timeout_s))
