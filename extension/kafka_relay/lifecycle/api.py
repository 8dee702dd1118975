"""Extensions API and Telemetry API client: HTTP/1.1 over one kept-alive socket, stdlib only.

Loaded right after registration (``register.py`` registers over a bare socket, before any
import that costs time). Every invocation makes one ``/next`` call, so it reuses one
connection (``httpconn``). Liberal in what it accepts (unknown fields and event types are
passed through), exact in what it sends.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from kafka_relay.errors import LambdaApiError
from kafka_relay.httpconn import Connection, Stale, encode_request

_EXT = "/2020-01-01/extension"
_NEXT = f"{_EXT}/event/next"
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
        # Set by __main__ from the registration (lifecycle/register.py, before heavy imports).
        self.identifier = ""
        self._kept: Connection | None = None
        self._kept_lock = threading.Lock()  # a second caller meanwhile gets its own
        self._next: tuple[str, bytes] | None = None  # (identifier, the /next request)
        self._next_sent = False  # request_next sent one whose answer next_event reads

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        return self._send(method, path, self._encode(method, path, body, headers), timeout)

    def _encode(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> bytes:
        all_headers = dict(headers or {})
        if self.identifier:
            all_headers["Lambda-Extension-Identifier"] = self.identifier
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        return encode_request(method, path, self._address, all_headers,
                              None if body is None else json.dumps(body).encode())

    def _send(self, method: str, path: str, request: bytes, timeout: float | None
              ) -> tuple[int, dict[str, str], bytes]:
        try:
            if not self._kept_lock.acquire(blocking=False):
                with Connection(self._address) as conn:
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
            conn = self._kept = self._kept or Connection(self._address)
            try:
                answer = conn.exchange(request, timeout)
            except Stale:
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

    def _next_request(self) -> bytes:
        # The same bytes every invocation (for the identifier they were made with).
        if self._next is None or self._next[0] != self.identifier:
            self._next = (self.identifier, self._encode("GET", _NEXT))
        return self._next[1]

    def request_next(self) -> None:
        """Send /next now; the next ``next_event`` reads its answer. Lambda counts the
        extension ready from this request, while the caller goes on assembling (on demand,
        ``app.py``). Until then the kept connection is the /next's: other calls meanwhile
        open one of their own."""
        self._kept_lock.acquire()
        try:
            conn = self._kept = self._kept or Connection(self._address)
            conn.post(self._next_request(), None)
        except (OSError, ValueError) as exc:
            self._drop()
            self._kept_lock.release()
            raise LambdaApiError(f"GET {_NEXT} on {self._address} failed: {exc}") from exc
        self._next_sent = True

    def next_event(self) -> dict[str, Any]:
        if self._next_sent:
            self._next_sent = False
            status, data = self._next_answer()
        else:  # no client timeout: the call legitimately blocks while the sandbox is frozen
            status, _, data = self._send("GET", _NEXT, self._next_request(), None)
        if status != 200:
            raise LambdaApiError(f"event/next answered {status}: {data[:500]!r}")
        return _json_object(data)

    def _next_answer(self) -> tuple[int, bytes]:
        """The answer to the /next ``request_next`` sent; the kept connection is free again."""
        conn = self._kept
        try:
            assert conn is not None, "request_next keeps the connection it sent /next on"
            ((status, data),) = conn.settle(None)
            if conn.closing:
                self._drop()
            return status, data
        except (OSError, ValueError) as exc:
            self._drop()
            raise LambdaApiError(f"GET {_NEXT} on {self._address} failed: {exc}") from exc
        finally:
            self._kept_lock.release()

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


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
