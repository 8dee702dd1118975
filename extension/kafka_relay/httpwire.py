"""The HTTP/1.1 the extension's loopback servers speak, on ``socketserver`` alone.

``http.server`` parses each request's headers with ``http.client``'s email parser: importing
the pair costs ~20 ms of CPU before the extension is ready, and the parser tens of µs per
request. The peers here are the kafka-relay client and Lambda's Telemetry API, so the subset
is small: a request line, headers (case-insensitive, the first of a repeated one wins, as
``email.message.Message.get``), keep-alive by HTTP version and ``Connection``, ``Expect:
100-continue``, and the ``send_response``/``send_header``/``end_headers`` calls of
``BaseHTTPRequestHandler`` that the handlers make.
"""

import contextlib
import io
import socket
import socketserver
import threading
import time
from collections.abc import Iterable
from typing import NamedTuple

MAX_LINE = 65536  # bytes in the request line or one header line (as http.server)
MAX_HEADERS = 100
_IDLE_SELECT_S = 3600.0  # a serving loop's select: woken by connections, never by a timer
_REASONS = {
    100: "Continue", 200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Gateway Timeout", 507: "Insufficient Storage",
}


def reason(status: int) -> str:
    """The reason phrase of ``status`` ("" for one not listed)."""
    return _REASONS.get(status, "")


class Headers(dict[str, str]):
    """Request headers by lower-cased name."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class BadRequest(Exception):
    """What cannot be served as an HTTP request; ``answer()`` is the refusal (and closes)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def answer(self) -> bytes:
        body = str(self).encode()
        return (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}\r\nConnection: close"
                f"\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode("latin-1") + body)


class HeaderBlock(NamedTuple):
    headers: Headers
    close: bool  # close the connection after answering
    expects_continue: bool  # send CONTINUE before reading the body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def parse_request_line(text: str) -> tuple[str, str, str]:
    """Method, path and version; ``BadRequest`` when ``text`` is not a request line."""
    words = text.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise BadRequest(400, f"bad request line {text[:100]!r}")
    method, path, version = words
    return method, path, version


def parse_headers(version: str, lines: Iterable[str]) -> HeaderBlock:
    """A request's header lines (without their line ends), by the rules above; ``BadRequest``
    for a malformed one. Every loopback server here parses with this and the above."""
    headers = Headers()
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"malformed header {line[:100]!r}")
        headers.setdefault(name.lower(), value.strip())
    find = dict.get  # the names are lower-cased already
    connection = find(headers, "connection", "").lower()
    close = version < "HTTP/1.1"
    if connection == "close":
        close = True
    elif connection == "keep-alive" and version >= "HTTP/1.1":
        close = False
    expects_continue = (find(headers, "expect", "").lower() == "100-continue"
                        and version >= "HTTP/1.1")
    return HeaderBlock(headers, close, expects_continue)


class RequestHandler(socketserver.StreamRequestHandler):
    """Serves requests on one connection until either side closes it (or it idles past
    ``timeout``); ``do_<METHOD>`` answers each. Subclasses may set ``timeout`` and
    ``disable_nagle_algorithm`` as for ``BaseHTTPRequestHandler``."""

    protocol_version = "HTTP/1.1"
    command = ""
    path = ""
    request_version = ""
    headers: Headers
    close_connection = True

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        try:
            head = self._whole_head()
            if head is None:  # line by line
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    self.close_connection = True
                    return
                if len(line) > MAX_LINE:
                    self._refuse(414, "request line too long")
                    return
                if not self._request_line(line.decode("iso-8859-1").rstrip("\r\n")):
                    return
                lines = self._header_lines()
                if lines is None or not self._headers(lines):
                    return
            elif not (self._request_line(head[0]) and self._headers(head[1:])):
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self._refuse(501, f"unsupported method {self.command!r}")
                return
            method()
            self.wfile.flush()
        except (TimeoutError, ConnectionResetError):
            # Idle past the timeout, or the client went away: one that closes with an answer
            # unread (the client reads an end call's answer late) resets the connection.
            self.close_connection = True

    def _whole_head(self) -> list[str] | None:
        """The request line and header lines, when the whole head is in the read buffer
        already (a client writes head and body at once): one read and one split instead of
        a read per line. None when it must be read line by line, which the rules above then
        apply to: a head not all arrived, one with a line not ended by CRLF, one
        blank-first, too long or with too many headers."""
        rfile = self.rfile
        if not isinstance(rfile, io.BufferedReader):
            return None
        buffered = rfile.peek()  # what is buffered; if nothing, one read (as readline)
        end = buffered.find(b"\r\n\r\n")
        if not 0 < end <= MAX_LINE:
            return None
        head = buffered[:end]
        breaks = head.count(b"\n")
        if breaks != head.count(b"\r\n") or breaks > MAX_HEADERS:
            return None  # a bare LF (a blank line may hide there), or too many lines
        rfile.read(end + 4)
        return head.decode("iso-8859-1").split("\r\n")

    def _header_lines(self) -> list[str] | None:
        """The header lines read one by one, up to the blank line (or the end of the
        stream); None when refused (431)."""
        lines: list[str] = []
        for _ in range(MAX_HEADERS + 1):
            raw = self.rfile.readline(MAX_LINE + 1)
            if len(raw) > MAX_LINE:
                self._refuse(431, "header line too long")
                return None
            if raw in (b"\r\n", b"\n", b""):
                return lines
            lines.append(raw.decode("iso-8859-1").rstrip("\r\n"))
        self._refuse(431, "too many headers")
        return None

    def _request_line(self, text: str) -> bool:
        """``command``, ``path`` and ``request_version`` from it; False when refused."""
        try:
            self.command, self.path, self.request_version = parse_request_line(text)
        except BadRequest as exc:
            self._refuse(exc.status, str(exc))
            return False
        return True

    def _headers(self, lines: list[str]) -> bool:
        """``headers`` and the connection's fate from them; False when refused."""
        try:
            block = parse_headers(self.request_version, lines)
        except BadRequest as exc:
            self._refuse(exc.status, str(exc))
            return False
        self.headers = block.headers
        self.close_connection = block.close
        if block.expects_continue:
            self.wfile.write(CONTINUE)
        return True

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self.wfile.write(BadRequest(status, message).answer())

    # -- the answer, as BaseHTTPRequestHandler builds it --------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        phrase = message if message is not None else reason(code)
        self._head = [f"{self.protocol_version} {code} {phrase}\r\n"]

    def send_header(self, keyword: str, value: str) -> None:
        self._head.append(f"{keyword}: {value}\r\n")
        if keyword.lower() == "connection":
            if value.lower() == "close":
                self.close_connection = True
            elif value.lower() == "keep-alive":
                self.close_connection = False

    def end_headers(self, body: bytes = b"") -> None:
        """The head, and ``body`` with it: one write (the socket's writer is unbuffered, so
        each write is a send the client may have to read separately)."""
        self._head.append("\r\n")
        self.wfile.write("".join(self._head).encode("latin-1") + body)
        self._head = []


class ThreadingServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One thread per connection; no reverse DNS of the bound address (``HTTPServer`` asks
    ``getfqdn`` for a server name nothing here uses)."""

    allow_reuse_address = True
    daemon_threads = True

    def serve(self) -> None:
        """``serve_forever`` without polling: the thread sleeps until a connection arrives (a
        poll every 50 ms woke it at every thaw of the environment); ``stop`` wakes it."""
        self.serve_forever(poll_interval=_IDLE_SELECT_S)

    def stop(self, timeout_s: float = 2.0) -> None:
        """End ``serve`` and close the listening socket. ``shutdown`` waits for the serving
        loop, whose select only a connection wakes: connect until the loop has ended."""
        ender = threading.Thread(target=self.shutdown, name="kafka-relay-server-stop",
                                 daemon=True)
        ender.start()
        deadline = time.monotonic() + timeout_s
        address = (str(self.server_address[0]), int(self.server_address[1]))
        while ender.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=0.1):
                pass
            ender.join(0.01)
        self.server_close()
