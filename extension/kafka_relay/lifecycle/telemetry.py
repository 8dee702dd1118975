"""The Telemetry API: the subscription, and the receiver Lambda posts platform events to.

A request's end: ``platform.runtimeDone`` (on-demand, SnapStart) or ``platform.report``
(every mode; the only one Managed Instances send per request, schema 2025-01-29). A
restore from a snapshot: ``platform.restoreStart``, the only restore signal an extension
gets (the Extensions API sends no event). Liberal: a subscription refused under one schema
is retried under the other.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from kafka_relay.config import LambdaMode
from kafka_relay.errors import LambdaApiError
from kafka_relay.httpwire import RequestHandler, ThreadingServer
from kafka_relay.lifecycle.api import MANAGED_INSTANCES_TELEMETRY_SCHEMA, TELEMETRY_SCHEMA
from kafka_relay.observability.log import JsonLogger

# Lambda delivers telemetry to the sandbox's own name; locally it may not resolve.
_HOSTS = ("sandbox.localdomain", "127.0.0.1")
# The events that end a request, each carrying its ``requestId``.
REQUEST_ENDS = frozenset({"platform.runtimeDone", "platform.report"})
RESTORE_START = "platform.restoreStart"


class TelemetryReceiver:
    def __init__(
        self,
        on_request_done: Callable[[str, str], None],
        *,
        on_restore: Callable[[], None] | None = None,
        hosts: tuple[str, ...] = _HOSTS,
        port: int = 0,
    ) -> None:
        self._on_request_done = on_request_done
        self._on_restore = on_restore
        self._server = self._bind(hosts, port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="kafka-relay-telemetry",
            daemon=True,
        )

    def _bind(self, hosts: tuple[str, ...], port: int) -> ThreadingServer:
        receiver = self
        error: OSError | None = None

        class Handler(RequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.receive(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        for host in hosts:
            try:
                server = ThreadingServer((host, port), Handler)
            except (OSError, socket.gaierror) as exc:
                error = exc
                continue
            self.host = host
            return server
        raise OSError(f"cannot listen for telemetry on {hosts}: {error}")

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}/"

    def start(self) -> str:
        self._thread.start()
        return self.uri

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

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
