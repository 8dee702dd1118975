"""One HTTP/1.1 client connection on a bare socket: a request out, its answer in. Stdlib only.

Shared by the handler-side client (records, the end call) and the extension's Lambda API
client (``/next`` every invocation): ``http.client`` costs ~15 ms to import (email, ssl) and
~50-70 µs of CPU per call to build the request and parse the answer's headers; this reads
the answer's head in one piece, then a Content-Length, chunked or until-close body. Every
system call counts here (a loopback call is a few of them): a body goes out with its head in
one ``sendmsg``, without first being copied behind it, and the socket blocks with the
kernel keeping its timeout (``SO_RCVTIMEO``/``SO_SNDTIMEO``, set only when it changes): in
Python's own timeout mode every send and every receive first polls, one more call each.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping

MAX_LINE = 65536  # bytes in the status line or one header line
MAX_HEAD = 4 * MAX_LINE  # bytes in the answer's status line and headers together
_TIMEVAL = struct.Struct("@ll")  # struct timeval (seconds, microseconds)
_MIN_TIMEOUT_S = 0.001  # the kernel reads a zero timeout as none at all


def encode_request(method: str, path: str, host: str, headers: Mapping[str, str],
                   body: bytes | None) -> bytes:
    """The request's bytes: request line, Host, ``headers``, Content-Length, body."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    for name, value in headers.items():
        head += f"{name}: {value}\r\n"
    payload = body or b""
    return f"{head}Content-Length: {len(payload)}\r\n\r\n".encode("latin-1") + payload


def _timed_out(timeout: float | None, exc: BlockingIOError) -> TimeoutError:
    # What a kernel timeout raises on a blocking socket (SO_RCVTIMEO/SO_SNDTIMEO).
    return TimeoutError(f"no progress within {timeout} s ({exc})")


class Stale(ConnectionError):
    """The server closed the connection before answering: a kept one may be retried."""


class Connection:
    """One HTTP/1.1 connection: a request out, its answer in."""

    def __init__(self, address: str, *, connect_timeout_s: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        name = host.strip("[]")
        # getaddrinfo encodes a str host with the "idna" codec, whose first import (stringprep,
        # unicodedata) costs ~2 ms of CPU at a cold start; it takes ASCII as bytes without it.
        self._sock = socket.create_connection(
            (name.encode() if name.isascii() else name, int(port)),  # type: ignore[arg-type]
            timeout=connect_timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(None)  # blocking: the kernel times out sends and receives
        self._timeout: float | None = None
        self._buffer = b""
        self.closing = False  # the server said Connection: close (or spoke HTTP/1.0)
        self.owed = 0  # answers to ``post``ed requests not read yet
        self.last_used = float("-inf")  # for the pool that keeps it, on the pool's clock

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def exchange(self, request: bytes, timeout: float | None, body: bytes = b""
                 ) -> tuple[int, dict[str, str], bytes]:
        """Send ``request`` (then ``body``, when the request is only the head) and read the
        answer: status, headers as sent, body. ``timeout`` bounds each send and receive."""
        self._arm(timeout)
        try:
            self._send(request, body)
            return self._answer()
        except BlockingIOError as exc:
            raise _timed_out(timeout, exc) from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Stale(str(exc)) from exc

    def post(self, request: bytes, timeout: float | None) -> None:
        """Send ``request`` without waiting for its answer: the caller reads it with
        ``settle`` before this connection's next exchange."""
        self._arm(timeout)
        try:
            self._sock.sendall(request)
        except BlockingIOError as exc:
            raise _timed_out(timeout, exc) from exc
        self.owed += 1

    def settle(self, timeout: float | None) -> list[tuple[int, bytes]]:
        """Read the answers owed to ``post``ed requests: status and body of each."""
        self._arm(timeout)
        answers = []
        try:
            while self.owed:
                status, _, data = self._answer()
                self.owed -= 1
                answers.append((status, data))
        except BlockingIOError as exc:
            raise _timed_out(timeout, exc) from exc
        except ConnectionResetError as exc:
            raise Stale(str(exc)) from exc
        return answers

    def _arm(self, timeout: float | None) -> None:
        """Bound each send and receive by ``timeout`` (a system call only when it changes)."""
        if timeout == self._timeout:
            return
        seconds = 0.0 if timeout is None else max(timeout, _MIN_TIMEOUT_S)
        value = _TIMEVAL.pack(int(seconds), int(seconds % 1 * 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        self._timeout = timeout

    def _answer(self) -> tuple[int, dict[str, str], bytes]:
        head = self._head()
        if not head:
            raise Stale("the connection closed before the answer")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:100]!r}")
        headers: dict[str, str] = {}
        length = -1
        chunked = False
        self.closing = version == "HTTP/1.0"
        for line in lines:
            name, _, value = line.partition(":")
            name = name.strip()
            value = value.strip()
            headers[name] = value
            lower = name.lower()
            if lower == "content-length":
                length = int(value)
            elif lower == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif lower == "connection":
                self.closing = value.lower() == "close"
        if chunked:
            data = self._chunked()
        elif length >= 0:
            data = self._exactly(length)
        else:  # until the server closes
            chunks = [self._buffer]
            while chunk := self._sock.recv(65536):
                chunks.append(chunk)
            data, self._buffer, self.closing = b"".join(chunks), b"", True
        return int(code), headers, data

    def _send(self, request: bytes, body: bytes) -> None:
        if not body:
            self._sock.sendall(request)
            return
        sent = self._sock.sendmsg((request, body))
        if sent < len(request):  # the send buffer was full: the rest as sendall sends it
            self._sock.sendall(request[sent:])
            sent = len(request)
        if sent < len(request) + len(body):
            self._sock.sendall(memoryview(body)[sent - len(request):])

    def _fill(self) -> bool:
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def _head(self) -> bytes:
        """The status line and headers (without the blank line after them), or b"" if the
        connection closed before any of it."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD or not self._fill():
                if self._buffer:
                    raise ValueError("the answer ended inside its head")
                return b""
        head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
        return head

    def _line(self) -> str:
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE or not self._fill():
                if self._buffer:
                    raise ValueError("the answer ended inside a line")
                return ""
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line.decode("latin-1")

    def _exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            if not self._fill():
                raise ValueError("the answer ended before its Content-Length")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _chunked(self) -> bytes:
        parts = []
        while size := int(self._line().partition(";")[0] or "0", 16):
            parts.append(self._exactly(size))
            self._exactly(2)
        while self._line():  # trailers
            pass
        return b"".join(parts)
