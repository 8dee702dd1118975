"""Register with the Extensions API over a bare socket, before anything else is imported.

Lambda counts init from process start, and ``http.client`` alone (email, ssl, …) costs more
than the registration itself; the rest of the API client (``api.py``) loads afterwards.
Only the status line and the identifier header matter here, so the body is not read.
Nothing but the C ``_socket`` module is imported (not socket.py with its enum and
selectors, not json): the caller turns the ``RegisterFailed`` (an OSError) into its log line.
"""

from __future__ import annotations

import _socket


class RegisterFailed(OSError):
    """Registration did not succeed; the message says why."""

REGISTER_PATH = "/2020-01-01/extension/register"
_MAX_HEAD = 64 * 1024


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
            head = _read_head(sock)
        finally:
            sock.close()
    except (OSError, ValueError) as exc:
        raise RegisterFailed(f"POST {REGISTER_PATH} on {address} failed: {exc}") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    identifier = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "lambda-extension-identifier":
            identifier = value.strip()
    if status != 200 or not identifier:
        raise RegisterFailed(f"register answered {lines[0]!r} without an extension identifier")
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


def _read_head(sock: _socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_HEAD:
            raise ValueError("the answer's headers are too large")
    return data.partition(b"\r\n\r\n")[0]
