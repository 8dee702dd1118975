"""Handoff API v1 on 127.0.0.1: keep-alive HTTP/1.1, one thread per connection (not per record).

POST /v1/records           accept a batch (JSON or NDJSON), 202 + ids; ?wait=delivered → outcomes
POST /v1/flush             flush now, return counts
POST /v1/invocation/end    the handler is done
GET  /v1/status            version, uptime, counts, depth, broker state, last error
"""

from __future__ import annotations

import errno
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kafka_relay import __version__
from kafka_relay.config import Config
from kafka_relay.delivery.engine import BufferFull, DeliveryEngine
from kafka_relay.errors import PortInUseError
from kafka_relay.handoff.schema import InvalidRequest, parse_body, validate
from kafka_relay.lifecycle.signals import HandlerSignals
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import REQUEST_ID_HEADER, TOKEN_HEADER
from kafka_relay.record import IdSource

_DEFAULT_WAIT_S = 30.0


@dataclass
class HandoffState:
    """What the server shares with the lifecycle loop."""

    config: Config
    relay: DeliveryEngine
    signals: HandlerSignals
    logger: JsonLogger
    ids: IdSource
    started: float
    current_request_id: str | None = None
    current_deadline_ms: int | None = None
    flush_strategy: str = ""
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # the port may linger in TIME_WAIT after an environment reset
    daemon_threads = True
    state: HandoffState


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a kept-alive
    # connection waits ~40 ms for the client's delayed ACK on every reply.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing --------------------------------------------------------------------

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        expected = self.server.state.config.token
        if expected is None:
            return True
        given = self.headers.get(TOKEN_HEADER) or ""
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._discard_body()
        what = "missing" if not given else "wrong"
        self._send(401, {"error": f"{what} {TOKEN_HEADER} header: send the function's "
                                  "AWS_SESSION_TOKEN (or KAFKA_RELAY_TOKEN) as the token"})
        return False

    def _content_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

    def _discard_body(self) -> None:
        length = self._content_length()
        if length > self.server.state.config.max_body_bytes:
            self.close_connection = True  # do not read a huge body just to ignore it
        elif length:
            self.rfile.read(length)

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    # -- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if urlsplit(self.path).path == "/v1/status":
            self._send(200, self._status())
        else:
            self._send(404, {"error": f"no route GET {self.path}: see /v1/status"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        route = urlsplit(self.path).path
        if route == "/v1/records":
            self._records()
        elif route == "/v1/flush":
            self._discard_body()
            self._flush()
        elif route == "/v1/invocation/end":
            self._end()
        else:
            self._discard_body()
            self._send(404, {"error": f"no route POST {route}"})

    def _records(self) -> None:
        state = self.server.state
        length = self._content_length()
        if length > state.config.max_body_bytes:
            self.close_connection = True
            self._send(413, {"error": f"body of {length} bytes is over the "
                                      f"{state.config.max_body_bytes}-byte limit "
                                      "(KAFKA_RELAY_MAX_BODY_BYTES): send smaller batches"})
            return
        body = self.rfile.read(length)
        request_id = self.headers.get(REQUEST_ID_HEADER) or state.current_request_id
        items: list[object] = []
        try:
            items = parse_body(body, self.headers.get("Content-Type") or "")
            records = validate(items, default_topic=state.config.default_topic,
                               new_id=state.ids.next, request_id=request_id,
                               now_ms=state.wall_ms())
        except InvalidRequest as exc:
            state.relay.note_rejected(len(items))
            state.logger.warning("handoff.rejected", reasons=len(exc.reasons),
                                 first=exc.reasons[0].reason, request_id=request_id)
            self._send(400, {"error": "request rejected, nothing accepted",
                             "reasons": [r.as_dict() for r in exc.reasons]})
            return
        ids = [r.id for r in records]
        query = self._query()
        wait = query.get("wait") == "delivered"
        try:
            watch = state.relay.accept(records, watch=wait)
        except BufferFull as exc:
            status = 503 if exc.retry_after_ms == 0 else 429
            retry_s = max(1, (exc.retry_after_ms + 999) // 1000)
            self._send(status, {"error": str(exc), "retry_after_ms": exc.retry_after_ms},
                       {"Retry-After": str(retry_s)})
            return
        if watch is None:
            self._send(202, {"accepted": len(ids), "ids": ids})
            return
        outcomes = state.relay.wait_settled(watch, self._wait_budget_s(query))
        self._send(200, {"accepted": len(ids), "ids": ids, "outcomes": outcomes})

    def _wait_budget_s(self, query: dict[str, str]) -> float:
        state = self.server.state
        budget = _DEFAULT_WAIT_S
        if query.get("timeout_ms", "").isdigit():
            budget = int(query["timeout_ms"]) / 1000
        if state.current_deadline_ms is not None:
            remaining = (state.current_deadline_ms - state.wall_ms()) / 1000 - 0.1
            budget = min(budget, max(0.0, remaining))
        return budget

    def _flush(self) -> None:
        state = self.server.state
        query = self._query()
        budget = state.config.flush_budget_ms / 1000
        if query.get("timeout_ms", "").isdigit():
            budget = min(budget, int(query["timeout_ms"]) / 1000)
        result = state.relay.flush(budget)
        self._send(200, result.as_dict())

    def _end(self) -> None:
        state = self.server.state
        body = self.rfile.read(self._content_length())
        request_id = self.headers.get(REQUEST_ID_HEADER)
        if not request_id and body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {}
            request_id = parsed.get("request_id") if isinstance(parsed, dict) else None
        state.signals.mark_done(request_id)
        self._send(200, {"ok": True, "request_id": request_id})

    def _status(self) -> dict[str, Any]:
        state = self.server.state
        status = state.relay.status()
        status.update(
            {
                "version": __version__,
                "uptime_s": round(time.monotonic() - state.started, 3),
                "flush": state.flush_strategy,
                "request_id": state.current_request_id,
            }
        )
        return status


class HandoffServer:
    def __init__(self, state: HandoffState, *, host: str = "127.0.0.1") -> None:
        port = state.config.port
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"handoff port {host}:{port} is already in use: set KAFKA_RELAY_PORT to a "
                    "free port (the function reads the same variable)"
                ) from exc
            raise
        self._server.state = state
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="kafka-relay-handoff",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
