"""Registration over a bare socket against a loopback HTTP server: what it sends, what it reads
back, and how each failure is named; and that registering imports nothing heavy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import free_port
from kafka_relay.lifecycle.register import REGISTER_PATH, RegisterFailed, register

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "extension"


@contextmanager
def _runtime_api(status: int, headers: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "name": self.headers["Lambda-Extension-Name"],
                         "body": json.loads(body)})
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            payload = b'{"functionName":"f","functionVersion":"$LATEST","handler":"h"}'
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        seen.append({"address": f"127.0.0.1:{server.server_port}"})
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def test_register_sends_name_and_events_and_returns_the_identifier() -> None:
    with _runtime_api(200, {"Lambda-Extension-Identifier": "ext-123"}) as seen:
        identifier = register(seen[0]["address"], "kafka-relay", ["INVOKE", "SHUTDOWN"])
    assert identifier == "ext-123"
    assert seen[1] == {"path": REGISTER_PATH, "name": "kafka-relay",
                       "body": {"events": ["INVOKE", "SHUTDOWN"]}}


@pytest.mark.parametrize(("status", "headers"), [(200, {}), (403, {"Lambda-Extension-Identifier":
                                                                   "x"})])
def test_an_answer_without_an_identifier_or_not_200_is_a_failure(
        status: int, headers: dict[str, str]) -> None:
    with _runtime_api(status, headers) as seen, pytest.raises(
            RegisterFailed, match=r"answered '.*' without an extension identifier: \{"):
        register(seen[0]["address"], "kafka-relay", ["INVOKE"])


def test_an_unset_or_unreachable_runtime_api_is_named() -> None:
    with pytest.raises(RegisterFailed, match="AWS_LAMBDA_RUNTIME_API is not set"):
        register("", "kafka-relay", ["INVOKE"])
    with pytest.raises(RegisterFailed, match="failed"):
        register(f"127.0.0.1:{free_port()}", "kafka-relay", ["INVOKE"], timeout_s=1)


def test_registering_imports_nothing_heavy() -> None:
    """What python -m kafka_relay has loaded when it registers: no config, typing, json,
    http.client, confluent_kafka."""
    probe = ("import sys; import kafka_relay.__main__, kafka_relay.lifecycle.register; "
             "print(sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=EXTENSION_DIR).stdout
    loaded = set(ast.literal_eval(out))
    heavy = {"typing", "json", "http.client", "socket", "kafka_relay.config",
             "kafka_relay.errors", "confluent_kafka", "argparse", "enum"}
    assert loaded & heavy == set()


def test_an_answer_from_a_server_that_keeps_the_connection_open_is_read_by_its_length() -> None:
    """A server ignoring ``Connection: close`` must not hold registration until a timeout."""
    import socket  # noqa: PLC0415 - only this test talks raw sockets

    answer = (b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: ext-9\r\n"
              b"Content-Length: 2\r\n\r\n{}")
    with socket.create_server(("127.0.0.1", 0)) as server:
        held: list[socket.socket] = []

        def serve() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(answer)
            held.append(conn)  # kept open past the answer

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            address = f"127.0.0.1:{server.getsockname()[1]}"
            assert register(address, "kafka-relay", ["INVOKE"], timeout_s=5) == "ext-9"
        finally:
            thread.join(timeout=5)
            for conn in held:
                conn.close()
