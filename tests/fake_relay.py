"""A scripted stand-in for the extension's handoff API on loopback, for client tests.

Each request is recorded (method, path, headers, body); a script decides the answer: a
status and JSON body, or ``DROP`` (close the connection without answering, as an extension
killed mid-request would), or ``Hold`` (keep the request unanswered until an event is set,
then drop it: the client's read times out).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kafka_relay.handoff.schema import framed_records
from kafka_relay.protocol import FRAMES_TYPE


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def records(self) -> list[dict[str, Any]]:
        """The records of a framed or JSON body, values as JSON (framed values decoded)."""
        if self.headers.get("Content-Type") != FRAMES_TYPE:
            return list(self.json()["records"])
        read = framed_records(self.body, default_topic="", new_ids=lambda n: [""] * n,
                              request_id=None, now_ms=0)
        return [{"topic": r.topic or None, "key": r.key and r.key.decode(),
                 "value": None if r.value is None else json.loads(r.value)} for r in read]


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # answer, then close the connection (Connection: close)


@dataclass(frozen=True)
class Hold:
    until: threading.Event


DROP = "drop"
Script = Callable[[Seen, int], "Reply | Hold | str"]  # (request, 0-based index) -> answer


class FakeRelay:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as the real server: no delayed-ACK stalls

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()),
                            self.rfile.read(length))
                with fake._lock:
                    index = len(fake.seen)
                    fake.seen.append(seen)
                answer = fake.script(seen, index)
                if isinstance(answer, Hold):
                    answer.until.wait(10)
                if not isinstance(answer, Reply):
                    self.close_connection = True
                    return
                data = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if answer.close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def stop(self) -> None:
        """Stop listening: new connections are refused."""
        self._server.shutdown()
        self._server.server_close()

    def records_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/v1/records")]


@contextmanager
def fake_relay(script: Script) -> Iterator[FakeRelay]:
    relay = FakeRelay(script)
    relay._thread.start()
    try:
        yield relay
    finally:
        relay.stop()


def accept(seen: Seen, prefix: str = "id") -> Reply:
    """A 202 with one id per record: ``<prefix>-<n>``."""
    count = len(seen.records())
    ids = [f"{prefix}-{n}" for n in range(count)]
    return Reply(202, {"accepted": count, "ids": ids})
