"""A Telemetry API subscriber: learns from ``platform.runtimeDone`` that the handler finished,
and (SnapStart) from ``platform.restoreStart`` that the environment was restored from a
snapshot — the only restore signal an extension gets: the Extensions API sends no event."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable

from kafka_relay.httpwire import RequestHandler, ThreadingServer

# Lambda delivers telemetry to the sandbox's own name; locally it may not resolve.
_HOSTS = ("sandbox.localdomain", "127.0.0.1")


class TelemetryListener:
    def __init__(
        self,
        on_runtime_done: Callable[[str, str], None],
        *,
        on_restore: Callable[[], None] | None = None,
        hosts: tuple[str, ...] = _HOSTS,
        port: int = 0,
    ) -> None:
        self._on_runtime_done = on_runtime_done
        self._on_restore = on_restore
        self._server = self._bind(hosts, port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="kafka-relay-telemetry",
            daemon=True,
        )

    def _bind(self, hosts: tuple[str, ...], port: int) -> ThreadingServer:
        listener = self
        error: OSError | None = None

        class Handler(RequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                listener.receive(self.rfile.read(length))
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
            if kind == "platform.runtimeDone":
                record = event.get("record") or {}
                if isinstance(record, dict) and record.get("requestId"):
                    self._on_runtime_done(str(record["requestId"]), str(record.get("status")))
            elif kind == "platform.restoreStart" and self._on_restore is not None:
                self._on_restore()
