"""Handoff API v1 on 127.0.0.1: keep-alive HTTP/1.1, one thread per connection (not per record).

POST /v1/records           accept a batch (framed, JSON or NDJSON), 202 + ids;
                           ?wait=delivered → outcomes
POST /v1/flush             flush now, return counts
POST /v1/invocation/end    the handler is done
GET  /v1/status            version, uptime, counts, depth, broker state, last error

Every body is read exactly (Content-Length or chunked), within a limit and a
deadline, before anything is accepted. Idle keep-alive connections time out, and
past a connection cap the least recently used idle one is closed, so idle or slow
clients cannot starve the handler's connection.
"""

import contextlib
import json
import socket
import threading
import time

# hmac.compare_digest is this constant-time comparison; hmac itself imports OpenSSL's
# hashlib (~2.5 ms of CPU before the extension is ready) for what this module never uses.
from _operator import _compare_digest as compare_digest
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs, urlsplit

from kafka_relay import __version__
from kafka_relay.config import Config
from kafka_relay.delivery.engine import BufferFull, FlushResult, Watch
from kafka_relay.delivery.rings import Entry
from kafka_relay.handoff.body import MAPPED_BODY_BYTES, Body, BodyError, read_body, trim_heap
from kafka_relay.handoff.idempotency import Answer, IdempotencyCache, KeyMismatch, fingerprint
from kafka_relay.handoff.port import BACKLOG, listen
from kafka_relay.handoff.schema import InvalidRequest, NewIds, records_from_body
from kafka_relay.handoff.signals import EndSignals
from kafka_relay.httpwire import RequestHandler, ThreadingServer, reason
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import (
    BROKER_FIELD,
    FLUSH_PATH,
    IDEMPOTENCY_KEY_HEADER,
    INVOCATION_END_PATH,
    MAX_TIMEOUT_MS,
    RECORDS_PATH,
    REFUSAL_FIELD,
    REQUEST_ID_HEADER,
    STATUS_PATH,
    TIMEOUT_PARAM,
    TOKEN_HEADER,
    TOKEN_SOURCES,
    WAIT_DELIVERED,
    WAIT_PARAM,
    Refusal,
)
from kafka_relay.record import IdSource, Record

_DEFAULT_WAIT_S = 30.0
IDLE_TIMEOUT_S = 60.0  # a kept-alive connection silent this long is closed
BODY_DEADLINE_S = 30.0  # a whole body must arrive within this
# After answering a body it did not read (413, a broken length), the server lets the client
# finish sending for this long before closing: closing at once resets the connection under a
# client still writing, and it never sees the answer.
LINGER_S = 2.0
MAX_CONNECTIONS = 256  # past this, the least recently used idle connection is closed
# A wait request while the broker is not answering first asks it for metadata this long: a
# broker that is back is used, one that is not is reported at once, not after the wait.
WAIT_PROBE_S = 0.5
# Retry-After of a full buffer while Kafka is away: past the client's bound on waiting for
# room, so the handler hears at once (the breaker's probes are 1-2 s apart).
GONE_RETRY_AFTER_MS = 2_000
_SMALL_BODY_LIMIT = 64 * 1024  # routes other than /v1/records
MAX_BODY_HINT = " (KAFKA_RELAY_MAX_BODY_BYTES): send smaller batches"
_MAX_KEY_CHARS = 200


class DeliveryPort(Protocol):
    """What the server needs of the delivery engine."""

    def accept(self, records: Sequence[Record], *, watch: bool = False,
               entry: Entry | None = None) -> Watch | None: ...
    def note_rejected(self, records: int) -> None: ...
    def flush(self, timeout_s: float) -> FlushResult: ...
    def status(self) -> dict[str, Any]: ...


class HandoffState(NamedTuple):
    """What the request handlers share. The lifecycle writes none of it: a restore reseeds
    ``ids`` in place, and ``flush_control`` reads what the loop last published."""

    config: Config
    relay: DeliveryPort
    signals: EndSignals
    logger: JsonLogger
    ids: IdSource
    started: float
    idempotency: IdempotencyCache  # one per server: keys are the server's clients'
    flush_strategy: str = ""
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    # Asked before any record is validated (ids drawn): None admits, a text refuses with 503
    # (SnapStart: nothing is accepted before the restore).
    admit: Callable[[], str | None] = lambda: None
    # The lifecycle loop's flush control (breaker, auto) for /v1/status.
    flush_control: Callable[[], Mapping[str, object]] = dict
    # For a wait request: why the broker is not answering after a probe of this many seconds
    # (delivery.reachability), or None.
    reprobe: Callable[[float], dict[str, Any] | None] = lambda _timeout_s: None
    # Whether connection attempts to Kafka fail now (delivery.reachability): a full buffer
    # then stays full, and the client is told not to wait for room.
    broker_gone: Callable[[], bool] = lambda: False


def _broker_refusal(problem: dict[str, Any], config: Config) -> str:
    return (f"kafka-relay cannot reach Kafka at {config.bootstrap_servers} ({problem['state']}: "
            f"{problem['error'] or 'no answer'}); nothing was accepted. Check "
            "KAFKA_BOOTSTRAP_SERVERS, the function's VPC subnets and security groups, and "
            "KAFKA_AUTH; send without wait=True to let kafka-relay keep the records until the "
            "broker answers")


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Server(ThreadingServer):
    # ThreadingServer reuses the address: the port may linger in TIME_WAIT after a reset.
    request_queue_size = BACKLOG
    state: HandoffState
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        self._connections: OrderedDict[socket.socket, bool] = OrderedDict()  # sock -> busy
        self._connections_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections[request] = False
            if len(self._connections) > self.max_connections:
                self._evict_idle(keep=request)
        super().process_request(request, client_address)

    def _evict_idle(self, *, keep: socket.socket) -> None:
        # All busy: admit anyway; busy connections end within the body deadline and wait.
        for sock, busy in self._connections.items():
            if not busy and sock is not keep:
                del self._connections[sock]
                with contextlib.suppress(OSError):  # its thread's read returns EOF; it ends
                    sock.shutdown(socket.SHUT_RDWR)
                return

    def mark(self, sock: socket.socket, *, busy: bool) -> None:
        with self._connections_lock:
            if sock in self._connections:
                self._connections[sock] = busy
                self._connections.move_to_end(sock)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)


class _Handler(RequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a kept-alive
    # connection waits ~40 ms for the client's delayed ACK on every reply.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S  # socket timeout while waiting for the next request
    body_deadline_s = BODY_DEADLINE_S
    _linger = False  # the body was not read: drain it after the answer (LINGER_S)
    server: _Server

    # -- plumbing --------------------------------------------------------------------

    def _send(self, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self._send_answer(answer_json(status, body, headers))

    def _send_answer(self, answer: Answer) -> None:
        """Head and body in one send, the head formatted at once (no answer here sets
        ``Connection`` through its headers: closing is ``close_connection``'s)."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
        close = "Connection: close\r\n" if self.close_connection else ""
        head = (f"HTTP/1.1 {answer.status} {reason(answer.status)}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(answer.body)}\r\n{extra}{close}\r\n")
        self.wfile.write(head.encode("latin-1") + answer.body)

    def _token_refusal(self) -> str | None:
        return token_refusal(self.server.state.config.token, self.headers.get(TOKEN_HEADER))

    def _query(self) -> dict[str, str]:
        if "?" not in self.path:  # most requests: parse_qs would cost more than the rest
            return {}
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query,
                                                 keep_blank_values=True).items()}

    # -- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(_GET_ROUTES.get(urlsplit(self.path).path), 0)

    def do_POST(self) -> None:
        if self.path == INVOCATION_END_PATH and _bodiless(self.headers) \
                and self._token_refusal() is None:
            # The client's end call (every invocation, the request id in its header, no
            # body): nothing to read, so none of ``_serve``'s body reading, socket deadlines
            # and busy marks. Refused (a wrong token), it goes the common way.
            self.server.mark(self.connection, busy=False)  # recently used: evicted last
            self._end(b"")
            return
        path = urlsplit(self.path).path
        self._serve(_POST_ROUTES.get(path), self.server.state.config.max_body_bytes
                    if path == RECORDS_PATH else _SMALL_BODY_LIMIT)

    def _serve(self, route: "Callable[[_Handler, Body], None] | None", limit: int) -> None:
        self.server.mark(self.connection, busy=True)
        try:
            try:
                body = read_body(self.headers, self.rfile, self.connection, limit=limit,
                                 too_large_hint=self._limit_hint(limit),
                                 deadline_s=self.body_deadline_s, idle_timeout_s=self.timeout)
            except BodyError as exc:
                self.close_connection = True  # the stream position is unknown now
                self._linger = True
                raise _HttpError(exc.status, str(exc)) from exc
            refused = self._token_refusal()
            if refused is not None:
                raise _HttpError(401, refused)
            if route is None:
                raise _HttpError(404, f"no route {self.command} {self.path}: see {STATUS_PATH}")
            route(self, body)
            if len(body) >= MAPPED_BODY_BYTES:  # answered: its transient copies can go
                trim_heap()
        except _HttpError as exc:
            self._send(exc.status, {"error": str(exc)})
            if self._linger:
                self._drain_unread()
        except Exception as exc:  # a bug must not drop the connection without an answer
            self.server.state.logger.error("handoff.failed", error=repr(exc))
            self.close_connection = True
            self._send(500, {"error": f"kafka-relay failed on this request: {exc!r}"})
        finally:
            self.server.mark(self.connection, busy=False)

    def _drain_unread(self) -> None:
        """Half-close, then read and drop what the client still sends (bounded by LINGER_S),
        so it can read the answer instead of a connection reset."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break

    def _limit_hint(self, limit: int) -> str:
        if limit == self.server.state.config.max_body_bytes:
            return MAX_BODY_HINT
        return " of this route"

    def _records(self, body: Body) -> None:
        state = self.server.state
        query = self._query()
        wait_s = _wait_budget_s(query)  # a bad timeout_ms is a 400 before anything is taken
        key = self.headers.get(IDEMPOTENCY_KEY_HEADER)
        if not key:
            self._send_answer(self._accept(body, query, wait_s))
            return
        if len(key) > _MAX_KEY_CHARS:
            raise _HttpError(400, f"{IDEMPOTENCY_KEY_HEADER} is over {_MAX_KEY_CHARS} chars")
        try:
            answer, _ = state.idempotency.run(
                key, fingerprint(body, self.headers.get("Content-Type") or "", _bound(query)),
                lambda: self._accept(body, query, wait_s),
                wait_s=wait_s + 1,
            )
        except KeyMismatch as exc:
            raise _HttpError(422, f"{IDEMPOTENCY_KEY_HEADER} {key!r} was used for a different "
                                  "body: use a new key per logical request") from exc
        except TimeoutError as exc:
            raise _HttpError(409, f"the request with {IDEMPOTENCY_KEY_HEADER} {key!r} is "
                                  "still being processed: retry it later") from exc
        self._send_answer(answer)

    def _accept(self, body: Body, query: dict[str, str], wait_s: float) -> Answer:
        return accept_records(self.server.state, body, self.headers.get("Content-Type") or "",
                              self.headers.get(REQUEST_ID_HEADER) or None,
                              wait=query.get(WAIT_PARAM) == WAIT_DELIVERED, wait_s=wait_s)

    def _flush(self, body: Body) -> None:
        state = self.server.state
        budget = state.config.flush_budget_ms / 1000
        timeout_s = _timeout_s(self._query())
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        self._send(200, state.relay.flush(budget).as_dict())

    def _end(self, body: Body) -> None:
        request_id = self.headers.get(REQUEST_ID_HEADER)
        if not request_id and body:
            try:
                parsed = json.loads(bytes(body))  # a small route: never a mapped body
            except (ValueError, RecursionError):
                parsed = {}
            found = parsed.get("request_id") if isinstance(parsed, dict) else None
            request_id = found if isinstance(found, str) else None
        # The answer first, then the signal: the loop's thread it wakes then finds the GIL free
        # sooner. (The client reads the answer only before its next request.)
        try:
            self._send_answer(Answer(200, b'{"ok":true,"request_id":%s}'
                                     % json.dumps(request_id).encode()))
        finally:
            self.server.state.signals.mark_done(request_id, called=True)

    def _status(self, body: Body) -> None:
        state = self.server.state
        status = state.relay.status()
        status.update({"flush_control": dict(state.flush_control()),
                       "version": __version__,
                       "uptime_s": round(time.monotonic() - state.started, 3),
                       "flush": state.flush_strategy})
        self._send(200, status)


_GET_ROUTES: Mapping[str, Callable[[_Handler, Body], None]] = {STATUS_PATH: _Handler._status}
_POST_ROUTES: Mapping[str, Callable[[_Handler, Body], None]] = {
    RECORDS_PATH: _Handler._records, FLUSH_PATH: _Handler._flush,
    INVOCATION_END_PATH: _Handler._end}


def _bodiless(headers: Mapping[str, str]) -> bool:
    """No body follows the head (no length or 0, not chunked)."""
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers


def _wait_budget_s(query: dict[str, str]) -> float:
    """The request's own budget (the client sets it from its remaining time)."""
    timeout_s = _timeout_s(query)
    return _DEFAULT_WAIT_S if timeout_s is None else timeout_s


def _timeout_s(query: dict[str, str]) -> float | None:
    """``timeout_ms`` in seconds (None: not given); anything but an integer from 0 to
    MAX_TIMEOUT_MS is a 400, never a silent default."""
    raw = query.get(TIMEOUT_PARAM)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and int(raw) <= MAX_TIMEOUT_MS):
        raise _HttpError(400, f"{TIMEOUT_PARAM}={raw[:40]!r}: give an integer number of "
                              f"milliseconds from 0 to {MAX_TIMEOUT_MS}")
    return int(raw) / 1000


def _bound(query: dict[str, str]) -> str:
    """The query as an idempotency key binds it: ``timeout_ms`` left out, since a retry
    legitimately sends the shorter wait it has left."""
    return "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k != TIMEOUT_PARAM)


def accepted_body(ids: list[str]) -> bytes:
    """The 202's body, joined instead of JSON-encoded id by id (~10x cheaper): an id is a
    prefix and a counter in IdSource's characters, none of which JSON escapes."""
    listed = '"' + '","'.join(ids) + '"' if ids else ""
    return f'{{"accepted":{len(ids)},"ids":[{listed}]}}'.encode()


def accept_records(state: HandoffState, body: Body, content_type: str, request_id: str | None,
                   *, wait: bool, wait_s: float, new_ids: NewIds | None = None,
                   entry: Entry | None = None) -> Answer:
    """Admit, validate and hand over one body of records: the answer either transport gives
    (the HTTP route, the ring listener). ``new_ids``: the records' ids (else drawn from
    ``state.ids``); ``entry``: the ring entry that holds the body."""
    refusal = state.admit()
    if refusal is not None:
        return not_restored(refusal)
    problem = state.reprobe(WAIT_PROBE_S) if wait else None
    if problem is not None:
        # Waiting would only run out the caller's time: say why now, accept nothing.
        state.logger.warning("handoff.wait_refused", broker=problem["state"],
                             error=problem["error"], request_id=request_id)
        return answer_json(503, {"error": _broker_refusal(problem, state.config),
                                 BROKER_FIELD: problem, "retry_after_ms": 1000},
                           {"Retry-After": "1"})
    try:
        records = records_from_body(body, content_type,
                                    default_topic=state.config.default_topic,
                                    new_ids=new_ids or state.ids.take, request_id=request_id,
                                    now_ms=state.wall_ms())
    except InvalidRequest as exc:
        state.relay.note_rejected(exc.records)
        state.logger.warning("handoff.rejected", reasons=len(exc.reasons),
                             first=exc.reasons[0].reason, request_id=request_id)
        return answer_json(400, {"error": "request rejected, nothing accepted",
                                 "reasons": [r.as_dict() for r in exc.reasons]})
    ids = [r.id for r in records]
    try:
        watch = state.relay.accept(records, watch=wait, entry=entry)
    except BufferFull as exc:
        error, retry_ms = str(exc), exc.retry_after_ms
        if retry_ms and exc.refusal in (Refusal.BUSY, Refusal.STORAGE) \
                and state.broker_gone():
            error += "; Kafka is not answering (connections fail), so room comes no sooner"
            retry_ms = max(retry_ms, GONE_RETRY_AFTER_MS)
        retry_s = max(1, (retry_ms + 999) // 1000)
        return answer_json(exc.refusal.status,
                           {"error": error, "retry_after_ms": retry_ms,
                            REFUSAL_FIELD: exc.refusal.value},
                           None if exc.refusal is Refusal.TOO_LARGE
                           else {"Retry-After": str(retry_s)})
    if watch is None:
        return Answer(202, accepted_body(ids))
    outcomes = watch.wait(wait_s)
    return answer_json(200, {"accepted": len(ids), "ids": ids, "outcomes": outcomes})


def answer_json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body, separators=(",", ":")).encode(),
                  tuple((headers or {}).items()))


def not_restored(refusal: str) -> Answer:
    """The 503 of a body (or a ring's HELLO) before a SnapStart restore: nothing taken."""
    return answer_json(503, {"error": refusal, "retry_after_ms": 0,
                             REFUSAL_FIELD: Refusal.NOT_RESTORED.value}, {"Retry-After": "1"})


def token_refusal(expected: str | None, given: str | None) -> str | None:
    """Why a request's handoff token (either transport's) is refused, or None: it matches,
    or none is set."""
    if expected is None or compare_digest((given or "").encode(), expected.encode()):
        return None
    return (f"{'wrong' if given else 'missing'} {TOKEN_HEADER} header: send the first set of "
            f"{', '.join(TOKEN_SOURCES)} as the token")


class HandoffServer:
    def __init__(
        self,
        state: HandoffState,
        *,
        host: str = "127.0.0.1",
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        body_deadline_s: float = BODY_DEADLINE_S,
        max_connections: int = MAX_CONNECTIONS,
        listening: socket.socket | None = None,
    ) -> None:
        """``listening``: the handoff port bound already (``port.listen``), else bound here."""
        handler = type("Handler", (_Handler,), {"timeout": idle_timeout_s,
                                                "body_deadline_s": body_deadline_s})
        if listening is None:
            listening = listen(host, state.config.port)
        self._server = _Server(listening.getsockname(), handler, bind_and_activate=False)
        self._server.socket.close()  # the unbound one socketserver made
        self._server.socket = listening
        self._server.server_activate()
        self._server.state = state
        self._server.max_connections = max_connections
        self._thread = threading.Thread(target=self._server.serve, name="kafka-relay-handoff",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()

