"""Hand records to the kafka-relay extension from any Python handler. Stdlib only.

    from kafka_relay import client

    @client.relay_handler                 # tells the extension when the handler is done
    def handler(event, context):
        client.send([{"key": "k1", "value": {"any": "json"}}])   # topic defaults to KAFKA_TOPIC
        return {"ok": True}

One keep-alive connection to 127.0.0.1:$KAFKA_RELAY_PORT is reused across
invocations. ``send`` returns once the extension owns the records (202);
``send(..., wait=True)`` returns per-record outcomes (delivered /
dead_lettered / spilled). When the buffer is full the client backs off and
retries within the invocation's remaining time, then raises ``RelayBusy``.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka_relay.protocol import (
    DEFAULT_PORT,
    REQUEST_ID_HEADER,
    TOKEN_HEADER,
    RecordRejected,
    RelayBusy,
    RelayError,
    RelayUnavailable,
)

__all__ = ["RecordRejected", "RelayBusy", "RelayClient", "RelayError", "RelayUnavailable",
           "SendResult", "default_client", "flush", "invocation", "invocation_end",
           "relay_handler", "send", "send_one", "status"]

_BATCH = 1000
_DEFAULT_TIMEOUT_S = 30.0
_MAX_BACKOFF_S = 2.0

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SendResult:
    accepted: int
    ids: list[str]
    outcomes: list[dict[str, Any]] | None = None

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes or [] if o.get("outcome") == outcome)


class RelayClient:
    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        token: str | None = None,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        env = os.environ if env is None else env
        self.host = host
        self.port = port or int(env.get("KAFKA_RELAY_PORT") or DEFAULT_PORT)
        self._token = token or env.get("KAFKA_RELAY_TOKEN") or env.get("AWS_SESSION_TOKEN")
        self._fallback = (env.get("KAFKA_RELAY_FALLBACK") or "").strip().lower() == "direct"
        self._env = env
        self._timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self._conn: http.client.HTTPConnection | None = None
        self._deadline: float | None = None
        self.request_id: str | None = None

    # -- invocation context -----------------------------------------------------------

    def begin(self, context: Any = None) -> None:
        """Note the invocation's request id and deadline (from the Lambda context)."""
        self.request_id = getattr(context, "aws_request_id", None)
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        self._deadline = self._clock() + remaining() / 1000 if callable(remaining) else None

    def _remaining_s(self) -> float:
        if self._deadline is None:
            return self._timeout_s
        return max(0.0, self._deadline - self._clock() - 0.2)

    # -- API ------------------------------------------------------------------------------

    def send(self, records: Iterable[Mapping[str, Any]], *, wait: bool = False) -> SendResult:
        """Hand records over in batches; each batch is accepted whole or rejected whole."""
        items = list(records)
        if not items:
            return SendResult(0, [], [] if wait else None)
        ids: list[str] = []
        outcomes: list[dict[str, Any]] = []
        for start in range(0, len(items), _BATCH):
            body = json.dumps({"records": items[start:start + _BATCH]}).encode()
            path = "/v1/records?wait=delivered" if wait else "/v1/records"
            try:
                reply = self._post_records(path, body)
            except RelayUnavailable:
                if not self._fallback:
                    raise
                return self._direct(items)
            ids.extend(reply.get("ids", []))
            outcomes.extend(reply.get("outcomes", []))
        return SendResult(len(ids), ids, outcomes if wait else None)

    def send_one(
        self,
        value: Any = None,
        *,
        key: str | None = None,
        topic: str | None = None,
        headers: Mapping[str, str] | None = None,
        timestamp_ms: int | None = None,
        value_b64: str | None = None,
        wait: bool = False,
    ) -> SendResult:
        record: dict[str, Any] = {"key": key}
        if value_b64 is not None:
            record["value_b64"] = value_b64
        else:
            record["value"] = value
        for name, field in (("topic", topic), ("headers", headers), ("timestamp_ms", timestamp_ms)):
            if field is not None:
                record[name] = dict(field) if isinstance(field, Mapping) else field
        return self.send([record], wait=wait)

    def flush(self, *, timeout_ms: int | None = None) -> dict[str, Any]:
        path = "/v1/flush" + (f"?timeout_ms={timeout_ms}" if timeout_ms is not None else "")
        status, reply, _ = self._call("POST", path, b"")
        return self._expect(status, reply, 200)

    def status(self) -> dict[str, Any]:
        status, reply, _ = self._call("GET", "/v1/status", None)
        return self._expect(status, reply, 200)

    def invocation_end(self, request_id: str | None = None) -> None:
        rid = request_id or self.request_id
        body = json.dumps({"request_id": rid}).encode()
        status, reply, _ = self._call("POST", "/v1/invocation/end", body)
        self._expect(status, reply, 200)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- transport ------------------------------------------------------------------------

    def _post_records(self, path: str, body: bytes) -> dict[str, Any]:
        deadline = self._clock() + self._remaining_s()
        backoff = 0.05
        while True:
            status, reply, _ = self._call("POST", path, body)
            if status != 429:
                return self._expect(status, reply, 200 if "wait=" in path else 202)
            wait_s = max(backoff, float(reply.get("retry_after_ms") or 0) / 1000)
            if self._clock() + wait_s > deadline:
                raise RelayBusy(
                    f"kafka-relay's buffer stayed full ({reply.get('error')}); the records were "
                    "NOT accepted: retry later, send smaller batches, or raise "
                    "KAFKA_RELAY_MAX_BUFFER_RECORDS/KAFKA_RELAY_MAX_BUFFER_BYTES"
                )
            self._sleep(min(wait_s, _MAX_BACKOFF_S))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _call(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers[TOKEN_HEADER] = self._token
        if self.request_id:
            headers[REQUEST_ID_HEADER] = self.request_id
        # A kept-alive connection may have been closed while the sandbox was frozen:
        # reconnect once before calling the extension unavailable.
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except ConnectionRefusedError as exc:
                self.close()
                raise self._unavailable(exc) from exc
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 2:
                    raise self._unavailable(exc) from exc
        try:
            reply = json.loads(data or b"{}")
        except ValueError:
            reply = {"error": data[:200].decode(errors="replace")}
        return response.status, reply, dict(response.getheaders())

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                self.host, self.port, timeout=self._remaining_s() + 5
            )
        return self._conn

    def _unavailable(self, exc: BaseException) -> RelayUnavailable:
        return RelayUnavailable(
            f"no kafka-relay extension answers on {self.host}:{self.port} ({exc}): attach the "
            "kafka-relay layer to this function (its extensions/kafka-relay must be in the "
            "layer), check the extension's init logs, and keep KAFKA_RELAY_PORT the same for "
            "function and extension; or set KAFKA_RELAY_FALLBACK=direct"
        )

    @staticmethod
    def _expect(status: int, reply: dict[str, Any], wanted: int) -> dict[str, Any]:
        if status == wanted:
            return reply
        if status == 400:
            raise RecordRejected(
                f"kafka-relay rejected the request: {reply.get('reasons')}",
                list(reply.get("reasons") or []),
            )
        raise RelayError(f"kafka-relay answered {status}: {reply.get('error', reply)}")

    def _direct(self, items: Sequence[Mapping[str, Any]]) -> SendResult:
        from kafka_relay.fallback import produce_direct  # noqa: PLC0415 - needs confluent-kafka

        return produce_direct(items, env=self._env, request_id=self.request_id)


_default: RelayClient | None = None


def default_client() -> RelayClient:
    """The process-wide client (created on first use, so the connection outlives invocations)."""
    global _default  # noqa: PLW0603 - one keep-alive connection per process is the point
    if _default is None:
        _default = RelayClient()
    return _default


def send(records: Iterable[Mapping[str, Any]], *, wait: bool = False) -> SendResult:
    return default_client().send(records, wait=wait)


def send_one(value: Any = None, **kwargs: Any) -> SendResult:
    return default_client().send_one(value, **kwargs)


def flush(*, timeout_ms: int | None = None) -> dict[str, Any]:
    return default_client().flush(timeout_ms=timeout_ms)


def status() -> dict[str, Any]:
    return default_client().status()


def invocation_end(request_id: str | None = None) -> None:
    default_client().invocation_end(request_id)


@contextmanager
def invocation(context: Any = None) -> Iterator[RelayClient]:
    """Within the block, sends carry the request id; at exit the extension hears we are done."""
    client = default_client()
    client.begin(context)
    try:
        yield client
    finally:
        try:
            client.invocation_end()
        except RelayError as exc:
            # Never mask the handler's own result; the extension still has runtimeDone.
            print(json.dumps({"level": "WARNING", "event": "kafka_relay.end_failed",
                              "error": str(exc)}), file=sys.stderr)


def relay_handler(handler: _F) -> _F:
    """Decorate a Lambda handler so the extension learns when it returns or raises."""

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any = None) -> Any:
        with invocation(context):
            return handler(event, context)

    return wrapper  # type: ignore[return-value]
