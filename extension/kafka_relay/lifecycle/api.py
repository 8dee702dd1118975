"""Extensions API and Telemetry API client: HTTP/1.1 over one kept-alive socket, stdlib only.

Loaded right after registration (``register.py`` registers over a bare socket, before any
import that costs time). Every invocation makes one ``/next`` call, so it reuses one
connection and skips ``http.client`` (its import costs ~15 ms of the start, its parsing
~0.1 ms a call). Liberal in what it accepts (unknown fields and event types are passed
through; Content-Length, chunked or until-close bodies), exact in what it sends.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from kafka_relay.errors import LambdaApiError

_EXT = "/2020-01-01/extension"
_TELEMETRY = "/2022-07-01/telemetry"
TELEMETRY_SCHEMA = "2022-12-13"
# Lambda Managed Instances accept this schema only (and it works elsewhere too).
MANAGED_INSTANCES_TELEMETRY_SCHEMA = "2025-01-29"


class ExtensionsApi:
    def __init__(self, runtime_api: str, *, name: str) -> None:
        if not runtime_api:
            raise LambdaApiError(
                "AWS_LAMBDA_RUNTIME_API is not set: kafka-relay runs as a Lambda extension "
                "(from the layer's extensions/ directory), not as a standalone program"
            )
        self._address = runtime_api
        self.name = name
        self.identifier = ""
        # Set by __main__ from the registration (lifecycle/register.py, before heavy imports):
        self.events: list[str] = []  # what Lambda accepted the registration for
        self._kept: _Connection | None = None
        self._kept_lock = threading.Lock()  # a second caller meanwhile gets its own

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._address}\r\n"
        if self.identifier:
            head += f"Lambda-Extension-Identifier: {self.identifier}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        request = f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        try:
            if not self._kept_lock.acquire(blocking=False):
                with _Connection(self._address) as conn:
                    return conn.exchange(request, timeout)
            try:
                return self._exchange_kept(request, timeout)
            finally:
                self._kept_lock.release()
        except (OSError, ValueError) as exc:
            raise LambdaApiError(f"{method} {path} on {self._address} failed: {exc}") from exc

    def _exchange_kept(self, request: bytes, timeout: float | None
                       ) -> tuple[int, dict[str, str], bytes]:
        """On the kept connection. One the server closed while idle is replaced and the
        request sent again, once: a fresh connection's failure is final."""
        while True:
            fresh = self._kept is None
            conn = self._kept = self._kept or _Connection(self._address)
            try:
                answer = conn.exchange(request, timeout)
            except _Stale:
                self._drop()
                if fresh:
                    raise
                continue
            except BaseException:
                self._drop()
                raise
            if conn.closing:
                self._drop()
            return answer

    def _drop(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def next_event(self) -> dict[str, Any]:
        # No client timeout: the call legitimately blocks while the sandbox is frozen.
        status, _, data = self._request("GET", f"{_EXT}/event/next", timeout=None)
        if status != 200:
            raise LambdaApiError(f"event/next answered {status}: {data[:500]!r}")
        return _json_object(data)

    def init_error(self, error_type: str, message: str) -> None:
        self._report("init/error", error_type, message)

    def exit_error(self, error_type: str, message: str) -> None:
        self._report("exit/error", error_type, message)

    def _report(self, kind: str, error_type: str, message: str) -> None:
        self._request(
            "POST", f"{_EXT}/{kind}",
            body={"errorMessage": message, "errorType": error_type, "stackTrace": []},
            headers={"Lambda-Extension-Function-Error-Type": error_type},
        )

    def subscribe_telemetry(self, uri: str, *, types: list[str],
                            schema: str = TELEMETRY_SCHEMA) -> None:
        status, _, data = self._request(
            "PUT", _TELEMETRY,
            body={
                "schemaVersion": schema,
                "destination": {"protocol": "HTTP", "URI": uri},
                "types": types,
                "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
            },
        )
        if status != 200:
            raise LambdaApiError(f"telemetry subscribe answered {status}: {data[:500]!r}")


class _Stale(ConnectionError):
    """The server closed the connection before answering: a kept one may be retried."""


class _Connection:
    """One HTTP/1.1 connection: a request out, its answer in."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10.0)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.closing = False  # the server said Connection: close (or spoke HTTP/1.0)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def exchange(self, request: bytes, timeout: float | None
                 ) -> tuple[int, dict[str, str], bytes]:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(request)
            status_line = self._line()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Stale(str(exc)) from exc
        if not status_line:
            raise _Stale("the connection closed before the answer")
        version, _, rest = status_line.partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:100]!r}")
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        lower = {name.lower(): value for name, value in headers.items()}
        self.closing = (version == "HTTP/1.0"
                        or lower.get("connection", "").lower() == "close")
        if "chunked" in lower.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in lower:
            body = self._exactly(int(lower["content-length"]))
        else:
            body, self._buffer, self.closing = self._buffer + self._rest(), b"", True
        return int(code), headers, body

    def _fill(self) -> bool:
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def _line(self) -> str:
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE or not self._fill():
                if self._buffer:
                    raise ValueError("the answer ended inside a line")
                return ""
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line.decode("latin-1")

    def _exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            if not self._fill():
                raise ValueError("the answer ended before its Content-Length")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _chunked(self) -> bytes:
        parts = []
        while size := int(self._line().partition(";")[0] or "0", 16):
            parts.append(self._exactly(size))
            self._exactly(2)
        while self._line():  # trailers
            pass
        return b"".join(parts)

    def _rest(self) -> bytes:
        chunks = []
        while chunk := self._sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


_MAX_LINE = 65536


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
