"""The loopback servers' HTTP/1.1: keep-alive by version and Connection, case-insensitive
headers (the first of a repeat wins), refusals that name the problem and close."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.httpwire import MAX_HEADERS, RequestHandler, ThreadingServer


class _Echo(RequestHandler):
    timeout = 5

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"path": self.path, "body": body.decode(),
                             "x": self.headers.get("X-Thing")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@contextmanager
def _server() -> Iterator[int]:
    with _server_of(_Echo) as port:
        yield port


@contextmanager
def _server_of(handler: type[RequestHandler]) -> Iterator[int]:
    server = ThreadingServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.stop()


class _Counting(ThreadingServer):
    rounds = 0

    def service_actions(self) -> None:  # once per round of the serving loop
        self.rounds += 1


def test_an_idle_server_sleeps_until_a_connection_and_stops_at_once() -> None:
    """No timer wakes the serving thread (each wake costs CPU at every thaw of the
    environment); stop() ends the loop and closes the port without waiting for one."""
    server = _Counting(("127.0.0.1", 0), _Echo)
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert server.rounds == 0
    assert _exchange(port, _post("/a", b"x", extra="Connection: close\r\n")).startswith(
        b"HTTP/1.1 200")
    time.sleep(0.1)  # the loop finishes its round after handing the connection to a thread
    assert server.rounds == 1
    started = time.monotonic()
    server.stop()
    thread.join(1.0)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _exchange(port: int, data: bytes) -> bytes:
    """Send, then read until the server closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<still open>")
        return b"".join(chunks)


def _post(path: str, body: bytes, *, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return (f"POST {path} {version}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def test_http11_keeps_the_connection_for_the_next_request_and_closes_on_request() -> None:
    with _server() as port:
        answer = _exchange(port, _post("/a", b"1")
                           + _post("/b", b"2", extra="Connection: close\r\n"))
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b'"path": "/a"' in answer
    assert b'"path": "/b"' in answer
    assert not answer.endswith(b"<still open>")


def test_http10_gets_one_answer_and_a_closed_connection() -> None:
    with _server() as port:
        answer = _exchange(port, _post("/a", b"1", version="HTTP/1.0") + _post("/b", b"2"))
    assert answer.count(b"200 OK") == 1
    assert not answer.endswith(b"<still open>")


def test_the_first_of_a_repeated_header_wins() -> None:
    with _server() as port:
        answer = _exchange(port, _post("/", b"", extra="X-Thing: one\r\nx-thing: two\r\n"
                                                      "Connection: close\r\n"))
    assert b'"x": "one"' in answer


def test_expect_100_continue_is_answered_before_the_body() -> None:
    with _server() as port:
        answer = _exchange(port, _post("/", b"hi", extra="Expect: 100-continue\r\n"
                                                         "Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


def test_refusals_name_the_problem_and_close() -> None:
    cases = {
        b"GARBAGE\r\n\r\n": b"400 Bad Request",
        b"POST / HTTP/1.1\r\nno colon here\r\n\r\n": b"400 Bad Request",
        b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n": b"501 Not Implemented",
        b"POST /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n": b"414 URI Too Long",
        b"POST / HTTP/1.1\r\n" + b"A: b\r\n" * (MAX_HEADERS + 1) + b"\r\n":
            b"431 Request Header Fields Too Large",
    }
    with _server() as port:
        for request, status in cases.items():
            answer = _exchange(port, request)
            assert answer.startswith(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\n")
            assert not answer.endswith(b"<still open>")


@settings(max_examples=25, deadline=None)
@given(flips=st.lists(st.booleans(), min_size=7, max_size=7),
       value=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40))
def test_header_names_match_whatever_their_case_and_values_arrive_trimmed(
        flips: list[bool], value: str) -> None:
    sent = "".join(c.upper() if flip else c.lower() for c, flip in zip("x-thing", flips,
                                                                      strict=True))
    with _server() as port:
        answer = _exchange(port, _post("/", b"", extra=f"{sent}:  {value} \r\n"
                                                      "Connection: close\r\n"))
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["x"] == value


def test_a_client_that_resets_its_connection_ends_it_without_an_error() -> None:
    """A client may close with an answer unread (the handler-side client reads the end
    call's answer before its next request, and its process may end first): the kernel then
    resets the connection, which is the client leaving, not a failure to report."""
    errors: list[BaseException | None] = []
    ended = threading.Event()

    class _Recording(ThreadingServer):
        def handle_error(self, request: object, client_address: object) -> None:
            errors.append(sys.exc_info()[1])

        def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
            super().shutdown_request(request)
            ended.set()

    server = _Recording(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", int(server.server_address[1])),
                                      timeout=5) as sock:
            sock.sendall(_post("/end", b""))
            sock.recv(1, socket.MSG_PEEK)  # the answer arrived, and stays unread
        assert ended.wait(5)
    finally:
        server.shutdown()
        server.server_close()
    assert errors == []


class _EchoHead(RequestHandler):
    """Answers with what it parsed: method, path, version, every header, keep-alive."""

    timeout = 5

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"command": self.command, "path": self.path,
                             "version": self.request_version, "headers": self.headers,
                             "close": self.close_connection, "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST


_header_lines = st.lists(
    st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                      min_size=1, max_size=8),
              st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=12),
              st.sampled_from(["\r\n", "\n", "\r\r\n"]))
    | st.sampled_from([("Connection", "keep-alive", "\r\n"), ("Expect", "100-continue", "\r\n"),
                       ("no colon", "", "\r\n"), (" Lead", "x", "\r\n")]),
    max_size=6)


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(["POST", "GET", "PUT"]),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTX/1"]), lines=_header_lines,
       end=st.sampled_from(["\r\n", "\n"]), cut=st.integers(1, 30))
def test_a_head_read_in_one_piece_parses_as_one_read_line_by_line(
        method: str, version: str, lines: list[tuple[str, str, str]], end: str,
        cut: int) -> None:
    """The server reads a head that arrived whole in one go, and one that arrives in pieces
    a line at a time: both give the same request (or the same refusal)."""
    head = f"{method} /p?q=1 {version}\r\n" + "".join(
        f"{name}: {value}{line_end}" if value or name != "no colon" else f"{name}{line_end}"
        for name, value, line_end in lines) + "Content-Length: 2\r\n" + end
    request = head.encode("latin-1") + b"ok"
    answers = []
    with _server_of(_EchoHead) as port:
        for pieces in ([request], [request[:cut], request[cut:]]):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for piece in pieces:
                    sock.sendall(piece)
                    time.sleep(0.02)  # the server has read what came, before the rest
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            answers.append(b"".join(chunks))
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 ")
