"""Register with the Extensions API over a bare socket, before anything else is imported.

Lambda counts init from process start, and ``http.client`` alone (email, ssl, …) costs more
than the registration itself; the rest of the API client (``api.py``) loads afterwards.
The status line and the identifier header are what matter; the body only names a refusal.
Nothing but the C ``_socket`` module and ``aws_lambda`` (which imports nothing) is imported
(not socket.py with its enum and selectors, not json): the caller turns the
``RegisterFailed`` (an OSError) into its log line.
"""

from __future__ import annotations

import _socket

from kafka_relay.aws_lambda import INVOKE, SHUTDOWN, registration_events

TYPE_CHECKING = False  # typing and collections cost milliseconds before registering
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


class RegisterFailed(OSError):
    """Registration did not succeed; the message says why (with Lambda's answer)."""

REGISTER_PATH = "/2020-01-01/extension/register"
_MAX_ANSWER = 64 * 1024


class Registration:
    __slots__ = ("events", "identifier", "refused")

    def __init__(self, identifier: str, events: list[str], refused: str | None) -> None:
        self.identifier = identifier
        self.events = events  # what Lambda accepted: the mode follows these (modes.mode.decide)
        self.refused = refused  # INVOKE refused as an invalid event type: SHUTDOWN only


def register_for_mode(
    address: str, name: str, env: Mapping[str, str],
    *, post: Callable[[str, str, list[str]], str] | None = None,
) -> Registration:
    """Register for the mode's events. Liberal: an INVOKE registration refused as an invalid
    event type (a managed-instances environment whose variable we did not recognise) is
    retried for SHUTDOWN only. Any other refusal is raised."""
    post = post or register
    events = registration_events(env)
    try:
        return Registration(post(address, name, events), events, None)
    except RegisterFailed as exc:
        if INVOKE not in events or "InvalidEventType" not in str(exc):
            raise
        return Registration(post(address, name, [SHUTDOWN]), [SHUTDOWN], str(exc))


def register(address: str, name: str, events: list[str], *, timeout_s: float = 10.0) -> str:
    """The extension identifier Lambda assigned; RegisterFailed naming what went wrong."""
    if not address:
        raise RegisterFailed(
            "AWS_LAMBDA_RUNTIME_API is not set: kafka-relay runs as a Lambda extension "
            "(from the layer's extensions/ directory), not as a standalone program")
    host, _, port = address.rpartition(":")
    body = ('{"events":[' + ",".join(f'"{e}"' for e in events) + "]}").encode()
    request = (f"POST {REGISTER_PATH} HTTP/1.1\r\nHost: {address}\r\n"
               f"Lambda-Extension-Name: {name}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    try:
        sock = _connect(host.strip("[]"), int(port), timeout_s)
        try:
            sock.sendall(request)
            answer = _read_answer(sock)
        finally:
            sock.close()
    except (OSError, ValueError) as exc:
        raise RegisterFailed(f"POST {REGISTER_PATH} on {address} failed: {exc}") from exc
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    identifier = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "lambda-extension-identifier":
            identifier = value.strip()
    if status != 200 or not identifier:
        raise RegisterFailed(f"register for {events} answered {lines[0]!r} without an extension "
                             f"identifier: {body[:500].decode('utf-8', 'replace')}")
    return identifier


def _connect(host: str, port: int, timeout_s: float) -> _socket.socket:
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _read_answer(sock: _socket.socket) -> bytes:
    """The answer: its head and, by ``Content-Length``, its body; without one, until the
    server closes (we asked for ``Connection: close``). Bounded in size; a server that keeps
    the connection open anyway is not waited for once the announced body is in."""
    data = b""
    expected: int | None = None
    while chunk := sock.recv(4096):
        data += chunk
        if len(data) > _MAX_ANSWER:
            raise ValueError("the answer is too large")
        head, found, body = data.partition(b"\r\n\r\n")
        if found and expected is None:
            expected = _content_length(head)
        if expected is not None and len(body) >= expected:
            break
    return data


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None
