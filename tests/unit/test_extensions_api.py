"""The Extensions API client keeps one connection for every call, replaces one the server
closed while idle, and reads Content-Length, chunked and until-close answers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from kafka_relay.errors import LambdaApiError
from kafka_relay.lifecycle.api import ExtensionsApi

Answer = Callable[[bytes], bytes]  # the request as read -> the bytes to send back


def _length(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


@contextmanager
def _server(answer: Answer, *, close_after: int = 0) -> Iterator[tuple[str, list[int]]]:
    """A raw server: each connection answers requests until the client closes (or after
    ``close_after`` answers, when set); yields its address and requests per connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    per_connection: list[int] = []

    def serve(conn: socket.socket) -> None:
        index = len(per_connection)
        per_connection.append(0)
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                request, buffer = head + b"\r\n\r\n" + buffer[:length], buffer[length:]
                per_connection[index] += 1  # before answering: the client may be done then
                conn.sendall(answer(request))
                if close_after and per_connection[index] >= close_after:
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", per_connection
    finally:
        listener.close()


def _event(request: bytes) -> bytes:
    if not request.startswith(b"GET /2020-01-01/extension/event/next HTTP/1.1\r\n") or \
            b"\r\nLambda-Extension-Identifier: ext-1\r\n" not in request:
        return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    return _length(json.dumps({"eventType": "INVOKE", "requestId": "r"}).encode())


def _api(address: str) -> ExtensionsApi:
    api = ExtensionsApi(address, name="kafka-relay")
    api.identifier = "ext-1"
    return api


def test_every_call_goes_over_one_kept_connection() -> None:
    with _server(_event) as (address, per_connection):
        api = _api(address)
        events = [api.next_event() for _ in range(5)]
    assert events == [{"eventType": "INVOKE", "requestId": "r"}] * 5
    assert per_connection == [5]


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_call_sent_again(
) -> None:
    with _server(_event, close_after=2) as (address, per_connection):
        api = _api(address)
        events = [api.next_event() for _ in range(5)]
    assert len(events) == 5
    assert per_connection == [2, 2, 1]


def test_a_next_sent_early_is_read_by_the_next_event_and_other_calls_take_their_own_connection(
) -> None:
    """``request_next`` sends /next on the kept connection and returns; a call meanwhile (the
    exit error of an init that failed after it) opens one of its own; ``next_event`` then reads
    the answer already sent, and the kept connection serves every later call."""
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request.split(b"\r\n", 1)[0])
        return _event(request) if b"event/next" in request else _length(b"")

    with _server(answer) as (address, per_connection):
        api = _api(address)
        api.request_next()
        api.exit_error("Extension.AuthError", "refused")
        events = [api.next_event() for _ in range(3)]
    assert events == [{"eventType": "INVOKE", "requestId": "r"}] * 3
    assert sorted(per_connection) == [1, 3]
    assert seen.count(b"GET /2020-01-01/extension/event/next HTTP/1.1") == 3
    assert b"POST /2020-01-01/extension/exit/error HTTP/1.1" in seen


def test_connection_close_and_http10_answers_are_not_reused() -> None:
    def answer(request: bytes) -> bytes:
        return _length(b"{}", extra="Connection: close\r\n")

    with _server(answer) as (address, per_connection):
        api = _api(address)
        for _ in range(3):
            api.next_event()
    assert per_connection == [1, 1, 1]


def test_chunked_and_until_close_bodies_are_read_whole() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n3;x=y\r\n 1}\r\n0\r\nTrailer: t\r\n\r\n")
    with _server(lambda request: chunked) as (address, _):
        assert _api(address).next_event() == {"a": 1}
    until_close = b'HTTP/1.0 200 OK\r\n\r\n{"b": 2}'
    with _server(lambda request: until_close, close_after=1) as (address, _):
        assert _api(address).next_event() == {"b": 2}


def test_errors_answered_or_unreachable_are_lambda_api_errors() -> None:
    requests: list[bytes] = []

    def refuse(request: bytes) -> bytes:
        requests.append(request)
        return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope"

    with _server(refuse) as (address, _):
        with pytest.raises(LambdaApiError, match="telemetry subscribe answered 403"):
            _api(address).subscribe_telemetry("http://x", types=["platform"])
        _api(address).init_error("Extension.ConfigError", "bad")  # reported, answer ignored
    with pytest.raises(LambdaApiError, match=r"event/next on 127\.0\.0\.1:1 failed"):
        _api("127.0.0.1:1").next_event()
    head, _, body = requests[1].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /2020-01-01/extension/init/error HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nLambda-Extension-Function-Error-Type: Extension.ConfigError\r\n" in head
    assert json.loads(body) == {"errorMessage": "bad", "errorType": "Extension.ConfigError",
                                "stackTrace": []}
