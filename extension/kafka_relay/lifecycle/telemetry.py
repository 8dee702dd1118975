"""The Telemetry API: the subscription, and the receiver Lambda posts platform events to.

A request's end: ``platform.runtimeDone`` (on-demand, SnapStart) or ``platform.report``
(every mode; the only one Managed Instances send per request, schema 2025-01-29). A
restore from a snapshot: ``platform.restoreStart``, the only restore signal an extension
gets (the Extensions API sends no event). Liberal: a subscription refused under one schema
is retried under the other.
"""

from __future__ import annotations

import contextlib
import functools
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from kafka_relay.config import LambdaMode
from kafka_relay.errors import LambdaApiError
from kafka_relay.httpwire import CONTINUE, BadRequest, parse_headers, parse_request_line
from kafka_relay.lifecycle.api import MANAGED_INSTANCES_TELEMETRY_SCHEMA, TELEMETRY_SCHEMA
from kafka_relay.observability.log import JsonLogger

# Lambda delivers telemetry to the sandbox's own name; locally it may not resolve.
_HOSTS = ("sandbox.localdomain", "127.0.0.1")
# The events that end a request, each carrying its ``requestId``.
REQUEST_ENDS = frozenset({"platform.runtimeDone", "platform.report"})
RESTORE_START = "platform.restoreStart"
_RESTORE_BYTES = RESTORE_START.encode()
_BACKLOG = 16
_MAX_PEERS = 16
_RECV_BYTES = 65536
MAX_HEAD = 65536  # bytes of a request line and headers
MAX_BODY = 4 * 1024 * 1024  # a batch is at most buffering.maxBytes (1 MiB) plus framing
_STOP_S = 2.0
# A connection closed by Lambda within this of its one answer was used once, not kept alive.
ONE_SHOT_S = 1.0
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_CLOSE_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class TelemetryReceiver:
    """Serves Lambda's POSTs on one thread with a selector. Lambda posts a batch every
    invocation, on a new connection or a kept-alive one: a thread per connection
    (``socketserver``'s threading server) cost ~1 ms of CPU per batch at 256 MB, more than
    all the rest of an invocation."""

    def __init__(
        self,
        on_request_done: Callable[[str, str], None],
        *,
        on_restore: Callable[[], None] | None = None,
        read_later: Callable[[Callable[[], None]], None] | None = None,
        hosts: tuple[str, ...] = _HOSTS,
        port: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``read_later``: takes a batch's reading (which tells its request ends) to run when
        an end is needed (``EndSignals.mark_later``); without it every batch is read as it
        comes. A batch with a restore is always read at once."""
        self._on_request_done = on_request_done
        self._on_restore = on_restore
        self._read_later = read_later
        self._listener = self._bind(hosts, port)
        self._wake, self._waker = socket.socketpair()
        self._stopping = False
        self._monotonic = monotonic
        # A connection carried one request and Lambda closed it at once (not after idling,
        # as a kept-alive one is): it posts each batch on a new connection, so each is
        # answered with ``Connection: close`` and closed here, instead of waking once more
        # for Lambda's close.
        self._one_per_connection = False
        self._thread = threading.Thread(target=self._serve, name="kafka-relay-telemetry",
                                        daemon=True)

    def _bind(self, hosts: tuple[str, ...], port: int) -> socket.socket:
        error: OSError | None = None
        for host in hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # A connection is taken once its first bytes are in: one wake, not two.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
                sock.bind((host, port))
                sock.listen(_BACKLOG)
            except OSError as exc:  # socket.gaierror too: the name does not resolve here
                sock.close()
                error = exc
                continue
            sock.setblocking(False)
            self.host = host
            return sock
        raise OSError(f"cannot listen for telemetry on {hosts}: {error}")

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self._listener.getsockname()[1]}/"

    def start(self) -> str:
        self._thread.start()
        return self.uri

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._waker.send(b"x")
        if self._thread.is_alive():
            self._thread.join(_STOP_S)
        for sock in (self._listener, self._wake, self._waker):
            sock.close()

    def _serve(self) -> None:
        # select.epoll itself: the selectors module's wrapper cost ~15 us of Python per wake.
        peers: dict[int, _Peer] = {}
        listening, wake = self._listener.fileno(), self._wake.fileno()
        with select.epoll() as epoll:
            epoll.register(listening, select.EPOLLIN)
            epoll.register(wake, select.EPOLLIN)
            try:
                while not self._stopping:
                    for fd, _ in epoll.poll():
                        if fd == listening:
                            self._accept(epoll, peers)
                        elif fd != wake:
                            peer = peers[fd]
                            if not self._serve_peer(peer):
                                epoll.unregister(fd)
                                del peers[fd]
                                peer.sock.close()
            finally:
                for peer in peers.values():
                    peer.sock.close()

    def _accept(self, epoll: select.epoll, peers: dict[int, _Peer]) -> None:
        """Take a connection and serve what it sent; keep it (watched) only if it stays open.
        Its first request is in already (``TCP_DEFER_ACCEPT``): a connection Lambda uses once
        costs no registration, no mode change, no second wake."""
        try:
            # socket.accept() reads the listener's family and type back through enum
            # conversions (~10 us): this one's are known.
            fd, _ = self._listener._accept()  # type: ignore[attr-defined]
        except OSError:  # gone before we took it, or out of descriptors for now
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
        peer = _Peer(sock)
        if not self._serve_peer(peer):
            sock.close()
            return
        sock.setblocking(False)
        if len(peers) >= _MAX_PEERS:  # the oldest first: Lambda keeps at most a few
            oldest = next(iter(peers))
            epoll.unregister(oldest)
            peers.pop(oldest).sock.close()
        peers[fd] = peer
        epoll.register(fd, select.EPOLLIN)

    def _serve_peer(self, peer: _Peer) -> bool:
        """Read what arrived and answer every complete request; False: close it. A request
        still incomplete is read once more before waiting: a client that sends its body
        behind its head (Python's ``http.client``) has usually sent it by then."""
        for _ in range(2):
            try:
                data = peer.sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)  # blocking until kept
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                self._one_per_connection = (
                    peer.served == 1 and self._monotonic() - peer.answered < ONE_SHOT_S)
                return False
            peer.buffer += data
            try:
                if not self._answer(peer):
                    return False
            except BadRequest as exc:
                with contextlib.suppress(OSError):
                    peer.sock.sendall(exc.answer())
                return False
            except OSError:
                return False
            if not peer.buffer:
                return True
        return True

    def _answer(self, peer: _Peer) -> bool:
        """Answer every complete request in ``peer``'s buffer; False: close the connection."""
        while (request := peer.take()) is not None:
            body, close = request
            peer.served += 1
            if peer.served > 1:
                self._one_per_connection = False
            if self._read_later is None or _RESTORE_BYTES in body:
                self.receive(body)
            else:
                self._read_later(functools.partial(self.receive, body))
            close = close or self._one_per_connection
            peer.answered = self._monotonic()  # before the send: Lambda may close on reading it
            peer.sock.sendall(_CLOSE_OK if close else _OK)
            if close:
                return False
        return True

    def receive(self, body: bytes) -> None:
        try:
            events = json.loads(body or b"[]")
        except ValueError:
            return
        for event in events if isinstance(events, list) else []:
            kind = event.get("type") if isinstance(event, dict) else None
            if kind in REQUEST_ENDS:
                record = event.get("record") or {}
                if isinstance(record, dict) and record.get("requestId"):
                    self._on_request_done(str(record["requestId"]), str(record.get("status")))
            elif kind == RESTORE_START and self._on_restore is not None:
                self._on_restore()


class Registrar(Protocol):
    def subscribe_telemetry(self, uri: str, *, types: list[str], schema: str = ...) -> None: ...


def telemetry_schemas(mode: LambdaMode) -> tuple[str, str]:
    """The schema to subscribe with first, and the one to try when it is refused."""
    if mode is LambdaMode.MANAGED_INSTANCES:
        return MANAGED_INSTANCES_TELEMETRY_SCHEMA, TELEMETRY_SCHEMA
    return TELEMETRY_SCHEMA, MANAGED_INSTANCES_TELEMETRY_SCHEMA


def subscribe(api: Registrar, uri: str, *, types: list[str], mode: LambdaMode,
              logger: JsonLogger) -> str:
    """Subscribe to Telemetry; the schema Lambda accepted. Raises the first refusal when
    both schemas are refused."""
    first, other = telemetry_schemas(mode)
    try:
        api.subscribe_telemetry(uri, types=types, schema=first)
        return first
    except LambdaApiError as exc:
        logger.info("telemetry.schema_refused", schema=first, retry_with=other, error=str(exc))
        try:
            api.subscribe_telemetry(uri, types=types, schema=other)
        except LambdaApiError:
            raise exc from None
        return other


class _Peer:
    """One connection's bytes so far, cut into requests: HTTP/1.1 with a Content-Length or
    chunked body, keep-alive by version and ``Connection``, ``Expect: 100-continue``."""

    __slots__ = ("_head", "answered", "buffer", "served", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.served = 0  # requests answered
        self.answered = 0.0  # when the last one was (monotonic)
        # The head of the request whose body is still arriving, parsed once: where its body
        # starts, its length (None: chunked), whether to close after it.
        self._head: tuple[int, int | None, bool] | None = None

    def take(self) -> tuple[bytes, bool] | None:
        """The next complete request's body and whether to close after answering it; None
        until one is complete. Raises ``BadRequest`` for what cannot be an HTTP request."""
        buffer = self.buffer
        head = self._head
        if head is None:
            head = self._head = self._parse_head(buffer)
            if head is None:
                return None
        start, length, close = head
        if length is None:
            found = _chunked(buffer, start)
        else:
            stop = start + length
            found = (bytes(buffer[start:stop]), stop) if len(buffer) >= stop else None
        if found is None:
            return None
        body, consumed = found
        del buffer[:consumed]
        self._head = None
        return body, close

    def _parse_head(self, buffer: bytearray) -> tuple[int, int | None, bool] | None:
        """The head at the start of ``buffer``, once it is all in (else None); sends
        ``100 Continue`` when asked to."""
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise BadRequest(431, "headers too long")
            return None
        request_line, *lines = bytes(buffer[:end]).decode("iso-8859-1").split("\r\n")
        version = parse_request_line(request_line)[2]
        headers, close, expects_continue = parse_headers(version, lines)
        length: int | None = None
        if "chunked" not in (headers.get("Transfer-Encoding") or "").lower():
            given = headers.get("Content-Length")
            if given is None:
                given = "0"
            if not (given.isascii() and given.isdigit()):
                raise BadRequest(400, f"Content-Length {given[:40]!r}")
            length = int(given)
            if length > MAX_BODY:
                raise BadRequest(413, f"over {MAX_BODY} bytes")
        body_bytes = 1 if length is None else length  # a chunked one: none arrived yet
        if expects_continue and body_bytes and len(buffer) < end + 4 + body_bytes:
            self.sock.sendall(CONTINUE)
        return end + 4, length, close


def _chunked(buffer: bytearray, at: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``at``: (body, where it ends), None while incomplete."""
    parts: list[bytes] = []
    total = 0
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        size_text = bytes(buffer[at:eol]).partition(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(400, f"chunk size {size_text[:40]!r}") from None
        total += size
        if total > MAX_BODY:
            raise BadRequest(413, f"over {MAX_BODY} bytes")
        at = eol + 2
        if size == 0:
            break
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at:at + size]))
        at += size + 2
    while True:  # trailers, up to the empty line
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        if eol == at:
            return b"".join(parts), eol + 2
        at = eol + 2
