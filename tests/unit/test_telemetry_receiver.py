"""The Telemetry receiver over the wire: one thread, many connections, HTTP/1.1 as Lambda
speaks it (a new connection per batch or a kept-alive one, Content-Length or chunked)."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.lifecycle.telemetry import MAX_BODY, TelemetryReceiver


def _batch(*request_ids: str) -> bytes:
    return json.dumps([{"time": "2025-01-29T00:00:00.000Z", "type": "platform.runtimeDone",
                        "record": {"requestId": rid, "status": "success"}}
                       for rid in request_ids]).encode()


def _post(body: bytes, *, extra: str = "") -> bytes:
    return (f"POST / HTTP/1.1\r\nHost: sandbox.localdomain\r\nContent-Type: application/json"
            f"\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def _chunked_post(body: bytes) -> bytes:
    half = len(body) // 2
    chunks = b"".join(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
                      for part in (body[:half], body[half:]) if part)
    return (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
            + b"0\r\nX-Trailer: 1\r\n\r\n")


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` answers' status lines (every answer here has no body)."""
    data = b""
    while data.count(b"\r\n\r\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [answer.partition(b"\r\n")[0] for answer in data.split(b"\r\n\r\n")[:count]]


@pytest.fixture
def ended() -> Iterator[tuple[TelemetryReceiver, list[str]]]:
    got: list[str] = []
    receiver = TelemetryReceiver(lambda request_id, _status: got.append(request_id),
                                 hosts=("127.0.0.1",))
    receiver.start()
    try:
        yield receiver, got
    finally:
        receiver.stop()


def _connect(receiver: TelemetryReceiver) -> socket.socket:
    port = int(receiver.uri.rsplit(":", 1)[1].strip("/"))
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_batch_per_new_connection_is_answered_and_told(
        ended: tuple[TelemetryReceiver, list[str]]) -> None:
    receiver, got = ended
    port = int(receiver.uri.rsplit(":", 1)[1].strip("/"))
    for request_id in ("a", "b", "c"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/", body=_batch(request_id),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"")
        conn.close()
    assert got == ["a", "b", "c"]


def test_a_kept_alive_connection_carries_many_batches_while_another_idles(
        ended: tuple[TelemetryReceiver, list[str]]) -> None:
    receiver, got = ended
    with _connect(receiver) as idle, _connect(receiver) as sock:
        idle.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")  # never finished
        sock.sendall(_post(_batch("a")) + _post(_batch("b", "c")) + _chunked_post(_batch("d")))
        assert _answers(sock, 3) == [b"HTTP/1.1 200 OK"] * 3
        sock.sendall(_post(_batch("e"), extra="Expect: 100-continue\r\n")[:-5])
        assert _answers(sock, 1) == [b"HTTP/1.1 100 Continue"]
        sock.sendall(_batch("e")[-5:])
        assert _answers(sock, 1) == [b"HTTP/1.1 200 OK"]
    assert got == ["a", "b", "c", "d", "e"]


def test_a_body_that_arrives_in_pieces_gets_one_continue_and_one_answer(
        ended: tuple[TelemetryReceiver, list[str]]) -> None:
    receiver, got = ended
    request = _post(_batch("a"), extra="Expect: 100-continue\r\n")
    head, body = request[:request.index(b"\r\n\r\n") + 4], _batch("a")
    with _connect(receiver) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        assert _answers(sock, 1) == [b"HTTP/1.1 100 Continue"]
        for start in range(0, len(body), 20):  # each piece read on its own
            sock.sendall(body[start:start + 20])
            time.sleep(0.01)
        sock.sendall(_post(b"[]", extra="Expect: 100-continue\r\n"))  # all in: no Continue
        sock.shutdown(socket.SHUT_WR)
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert answers == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2
    assert got == ["a"]


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=8, unique=True))
def test_requests_split_anywhere_are_read_whole(cuts: list[int]) -> None:
    got: list[str] = []
    receiver = TelemetryReceiver(lambda request_id, _status: got.append(request_id),
                                 hosts=("127.0.0.1",))
    receiver.start()
    stream = _post(_batch("a")) + _chunked_post(_batch("b", "c")) + _post(_batch("d"))
    edges = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    try:
        with _connect(receiver) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for start, stop in itertools.pairwise(edges):
                sock.sendall(stream[start:stop])
            assert _answers(sock, 3) == [b"HTTP/1.1 200 OK"] * 3
    finally:
        receiver.stop()
    assert got == ["a", "b", "c", "d"]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), b"413"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
])
def test_what_is_not_a_request_is_refused_and_closed(
        ended: tuple[TelemetryReceiver, list[str]], request_bytes: bytes, status: bytes) -> None:
    receiver, got = ended
    with _connect(receiver) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):  # the receiver closes after answering
            answer += chunk
    assert answer.split(b" ")[1] == status
    assert b"Connection: close" in answer
    assert got == []
    with _connect(receiver) as sock:  # and keeps serving others
        sock.sendall(_post(_batch("after")))
        assert _answers(sock, 1) == [b"HTTP/1.1 200 OK"]
    assert got == ["after"]


def test_an_http_1_0_request_is_answered_and_closed(
        ended: tuple[TelemetryReceiver, list[str]]) -> None:
    receiver, got = ended
    with _connect(receiver) as sock:
        sock.sendall(_post(_batch("a")).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in answer
    assert got == ["a"]


def test_batches_go_to_read_later_except_one_with_a_restore_read_at_once() -> None:
    ended: list[str] = []
    restores: list[int] = []
    later: list[Callable[[], None]] = []
    receiver = TelemetryReceiver(lambda request_id, _status: ended.append(request_id),
                                 on_restore=lambda: restores.append(1),
                                 read_later=later.append, hosts=("127.0.0.1",))
    receiver.start()
    restore = json.dumps([{"time": "2025-01-29T00:00:00.000Z", "type": "platform.restoreStart",
                           "record": {}}]).encode()
    try:
        with _connect(receiver) as sock:
            sock.sendall(_post(_batch("a")) + _post(restore) + _post(_batch("b")))
            assert _answers(sock, 3) == [b"HTTP/1.1 200 OK"] * 3
    finally:
        receiver.stop()
    assert (ended, restores, len(later)) == ([], [1], 2)
    for read in later:
        read()
    assert ended == ["a", "b"]


def _read_to_close(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_client_that_posts_each_batch_on_a_new_connection_gets_each_answered_and_closed(
        ended: tuple[TelemetryReceiver, list[str]]) -> None:
    """Once a connection carried one batch and its client closed it at once, every next one
    is answered with ``Connection: close`` and closed by the receiver (no wake for the
    client's close)."""
    receiver, got = ended
    with _connect(receiver) as sock:
        sock.sendall(_post(_batch("a")))
        assert _answers(sock, 1) == [b"HTTP/1.1 200 OK"]
    time.sleep(0.1)  # the receiver reads the close before the next connection comes
    for request_id in ("b", "c"):
        with _connect(receiver) as sock:
            sock.sendall(_post(_batch(request_id)))
            answer = _read_to_close(sock)  # the receiver closes it
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.count(b"Connection: close") == 1
    assert got == ["a", "b", "c"]


def test_a_connection_kept_alive_after_its_one_batch_keeps_getting_keep_alive_answers() -> None:
    """A client that closes its connection only after idling (a kept-alive one timing out) is
    no client of one batch per connection."""
    now = [0.0]
    got: list[str] = []
    receiver = TelemetryReceiver(lambda request_id, _status: got.append(request_id),
                                 hosts=("127.0.0.1",), monotonic=lambda: now[0])
    receiver.start()
    try:
        with _connect(receiver) as sock:
            sock.sendall(_post(_batch("a")))
            assert _answers(sock, 1) == [b"HTTP/1.1 200 OK"]
            now[0] += 90.0  # idled out
        with _connect(receiver) as sock:
            sock.sendall(_post(_batch("b")) + _post(_batch("c")))
            assert _answers(sock, 2) == [b"HTTP/1.1 200 OK"] * 2
    finally:
        receiver.stop()
    assert got == ["a", "b", "c"]
