"""Hand records to the kafka-relay extension from any Python handler. Stdlib only.

    from kafka_relay import client

    @client.relay_handler                 # tells the extension when the handler is done
    def handler(event, context):
        client.send([{"key": "k1", "value": {"any": "json"}}])   # topic defaults to KAFKA_TOPIC
        return {"ok": True}

``send`` returns once the extension owns the records (202); ``send(..., wait=True)``
returns per-record outcomes (delivered / dead_lettered / spilled / pending).

- Transport: a batch sent without ``wait`` is appended to a ring file of this process's own
  and announced on a Unix socket (``kafka_relay.ring``; the extension reads it in place and
  answers as ``POST /v1/records`` would: the same results and exceptions); where no ring
  listener answers (``KAFKA_RELAY_RING=false``, an extension without one) it goes over
  loopback HTTP, as ``wait=True``, flush, status and the end call always do.

- Encoding: each ``value`` is encoded here once, as the bytes that go to Kafka, into the
  framed body (``protocol.FRAMES_TYPE``): the extension does not parse it again. A record
  that cannot be encoded is ``RecordRejected`` before anything is sent.

- Time: every call gets the invocation's remaining time (``get_remaining_time_in_millis`` of
  the context given to ``relay_handler`` / ``invocation`` / ``begin``) minus a margin, or
  ``timeout_s`` outside an invocation; ``wait=True`` tells the extension how long it may wait.
- Retries cannot duplicate: each batch is one logical request with its own idempotency key,
  re-sent with the same key after a reset connection or a read timeout; the extension answers
  a repeat with its first answer (same ids).
- 429 (buffer full) and 507 (the extension cannot write to disk): back off, honouring
  Retry-After, for at most 0.8 s (and within the remaining time), then ``RelayBusy`` /
  ``RelayStorageUnavailable``; at once when Retry-After says room will not come sooner
  (the extension says so while Kafka is away).
  413 (the batch alone is over a limit): ``BatchTooLarge``, never retried. 503:
  ``RelayShuttingDown``, or ``RelayNotRestored`` before a SnapStart restore. 401: the token
  is wrong.
- ``wait=True`` while the extension cannot reach Kafka (its circuit breaker is open, or the
  broker never answered since init): ``BrokerUnavailable`` at once, naming the broker's
  error; nothing accepted (without ``wait`` the extension keeps the records meanwhile).
- The end call (``relay_handler``, ``invocation``) on a connection used in the last 20 s
  does not wait for its answer: it is read before that connection's next request, and a
  refusal is then printed as the ``kafka_relay.end_failed`` warning.
- Thread-safe: one client (and the process-wide default) may be shared by threads. Each
  request takes a kept-alive connection from a small pool, so threads never interleave on a
  connection and do not queue behind each other (docs/handler.md has the measurement).
  The invocation context (request id, remaining time) is per client, not per thread.
- ``KAFKA_RELAY_FALLBACK=direct``: batches the extension did not take because none answers
  are produced in-process by ``kafka_relay.direct`` (loaded only then: it needs
  confluent-kafka); see ``SendResult`` for what is reported.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka_relay.httpconn import Connection, Stale
from kafka_relay.protocol import (
    BROKER_FIELD,
    DEFAULT_PORT,
    FALLBACK_DIRECT,
    FALLBACK_ENV,
    FLUSH_PATH,
    FRAMES_TYPE,
    IDEMPOTENCY_KEY_HEADER,
    INVOCATION_END_PATH,
    JSON_TYPE,
    PORT_ENV,
    RECORDS_PATH,
    REFUSAL_FIELD,
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    STATUS_PATH,
    TIMEOUT_PARAM,
    TOKEN_ENV,
    TOKEN_HEADER,
    TOKEN_SOURCES,
    WAIT_DELIVERED,
    WAIT_PARAM,
    BatchTooLarge,
    BrokerUnavailable,
    FrameError,
    Outcome,
    RecordRejected,
    Refusal,
    RelayBusy,
    RelayError,
    RelayNotRestored,
    RelayShuttingDown,
    RelayStorageUnavailable,
    RelayUnavailable,
    encode_frames,
    handoff_token,
)
from kafka_relay.ring import RING_ENV, Writer, ring_dir

__all__ = ["BatchTooLarge", "BrokerUnavailable", "RecordRejected", "RelayBusy", "RelayClient",
           "RelayError", "RelayNotRestored", "RelayShuttingDown", "RelayStorageUnavailable",
           "RelayUnavailable", "SendResult", "default_client", "flush", "invocation",
           "invocation_end", "relay_handler", "send", "send_one", "status"]

_BATCH = 1000
_DEFAULT_TIMEOUT_S = 30.0  # per call, outside an invocation
_ATTEMPT_TIMEOUT_S = 10.0  # one try of a call that does not wait (a 202 takes milliseconds)
_MARGIN_S = 0.2  # kept back from the invocation's remaining time to return the result
_REPLY_MARGIN_S = 0.25  # wait=True: the extension answers this long before we stop reading
_MAX_ATTEMPTS = 3  # tries of one request after transport failures (same idempotency key)
_MAX_BACKOFF_S = 2.0
# A batch waits at most this long for room (429/507), never past the remaining time: the
# handler learns within a second that the relay cannot take it, instead of spending its
# invocation (a buffer full while Kafka is away stays full; the extension then says so with
# a Retry-After past this, and the client gives up at once).
_MAX_BUSY_S = 0.8
_MAX_IDLE = 8  # kept-alive connections kept per client
_RETRIED = (429, 507)  # took nothing, may take it later: backed off within the remaining time
_POST_IDLE_S = 20.0  # an end call on a connection idle longer waits for its answer

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SendResult:
    """What became of the records of one ``send``.

    accepted  records the extension took (answered 202/200) plus records the direct fallback
              got delivered. A record that failed is never counted here.
    ids       one ``x-relay-id`` per record, in the order given.
    outcomes  one ``{"id", "outcome", "error"?}`` per record, in order, when known: with
              ``wait=True``, or when the direct fallback produced some batches (records the
              extension had already taken are then ``pending``: it owns them). Else None:
              every record was taken by the extension.
    failed    records the direct fallback could NOT deliver (outcome ``failed``): the caller
              still owns them and should send them again.
    """

    accepted: int
    ids: list[str]
    outcomes: list[dict[str, Any]] | None = None
    failed: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes or [] if o.get("outcome") == outcome)

    def accepted_mask(self) -> list[bool]:
        """Per record, in order: taken by the extension or delivered (not failed)."""
        if self.outcomes is None:
            return [True] * len(self.ids)
        return [o.get("outcome") != Outcome.FAILED.value for o in self.outcomes]


class _Transport:
    """Kept-alive connections to the extension (a small pool: threads never share one) and
    one request with its re-sends after transport failures."""

    def __init__(self, host: str, port: int, *, token: str | None,
                 clock: Callable[[], float], attempt_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self._token = token
        self._clock = clock
        self._attempt_timeout_s = attempt_timeout_s
        self._pool_lock = threading.Lock()
        self._idle: list[Connection] = []
        # The header lines every request carries, formatted once.
        self._fixed = f"Host: {host}:{port}\r\n" + (f"{TOKEN_HEADER}: {token}\r\n" if token else "")

    def exchange(
        self,
        method: str,
        path: str,
        body: bytes | None,
        deadline: float,
        extra: Mapping[str, str],
        *,
        long_wait: bool,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        """One request and its answer's JSON (see ``send``)."""
        payload = body or b""
        status, reply_headers, data = self.send(
            self.head(method, path, extra, len(payload)), payload, deadline,
            what=f"{method} {path}", long_wait=long_wait)
        return status, _decode(data), reply_headers

    def send(self, request: bytes, body: bytes, deadline: float, *, what: str,
             long_wait: bool) -> tuple[int, Mapping[str, str], bytes]:
        """Send one request (its ``head`` and ``body``), re-sending it (same headers, same
        key) after a transport failure: a kept-alive connection closed during a freeze, a
        reset, or a read timeout."""
        failure: BaseException | None = None
        for _attempt in range(_MAX_ATTEMPTS):
            left = deadline - self._clock()
            if left <= 0:
                break
            timeout = left if long_wait else min(left, self._attempt_timeout_s)
            try:
                conn = self._checkout(timeout)
            except ConnectionRefusedError as exc:
                raise _unavailable(self.host, self.port, exc) from exc  # nothing was taken
            except OSError as exc:
                failure = exc
                continue
            try:
                _settle(conn, timeout)
                answer = conn.exchange(request, timeout, body)
            except (ValueError, OSError) as exc:
                self._release(conn, reuse=False)
                # After a freeze every idle connection is likely dead too: retry on a new one.
                self.close()
                failure = exc
                continue
            self._release(conn, reuse=not conn.closing)
            return answer
        if failure is None or isinstance(failure, TimeoutError):
            raise RelayError(
                f"kafka-relay on {self.host}:{self.port} did not answer {what} within "
                f"the time this invocation has left ({failure or 'no time left'}); the request "
                "may or may not have been accepted: give the function more time or send less "
                "per call"
            )
        raise _unavailable(self.host, self.port, failure)

    def post_unanswered(self, request: bytes, deadline: float) -> bool:
        """Send a request without a body and without waiting for its answer, which is read
        before the next request on its connection. Only on a connection used within
        ``_POST_IDLE_S``: one idle longer may be closing (the extension closes kept-alive
        connections after a minute of silence) and the request be lost unseen. False when
        nothing was sent: ``send`` it instead."""
        with self._pool_lock:
            # (A clock that went back, as after a snapshot restore, proves nothing either.)
            if not self._idle or not 0 <= self._clock() - self._idle[-1].last_used <= _POST_IDLE_S:
                return False
            conn = self._idle.pop()
        left = deadline - self._clock()
        timeout = min(left, self._attempt_timeout_s)
        try:
            if left <= 0:
                raise TimeoutError("no time left")
            _settle(conn, timeout)  # one answer owed at most: the last one, long arrived
            conn.post(request, timeout)
        except (ValueError, OSError):
            self._release(conn, reuse=False)
            return False
        self._release(conn, reuse=True)
        return True

    def head(self, method: str, path: str, extra: Mapping[str, str], length: int) -> bytes:
        """The request line and headers of a request with a body of ``length`` bytes."""
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        for name, value in extra.items():
            head += f"{name}: {value}\r\n"
        return f"{head}Content-Length: {length}\r\n\r\n".encode("latin-1")

    def _checkout(self, connect_timeout_s: float) -> Connection:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return Connection(f"{self.host}:{self.port}", connect_timeout_s=connect_timeout_s)

    def close(self) -> None:
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _release(self, conn: Connection, *, reuse: bool) -> None:
        if reuse:
            conn.last_used = self._clock()
            with self._pool_lock:
                if len(self._idle) < _MAX_IDLE:
                    self._idle.append(conn)
                    return
        conn.close()


class RelayClient:
    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        token: str | None = None,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        attempt_timeout_s: float = _ATTEMPT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        new_key: Callable[[], str] = lambda: os.urandom(16).hex(),
        framed: bool = True,
    ) -> None:
        env = os.environ if env is None else env
        self.host = host
        self.port = port or int(env.get(PORT_ENV) or DEFAULT_PORT)
        self._fallback = (env.get(FALLBACK_ENV) or "").strip().lower() == FALLBACK_DIRECT
        self._env = env
        self._timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self._new_key = new_key
        self._framed = framed
        token = token or handoff_token(env)
        self._transport = _Transport(host, self.port, token=token,
                                     clock=clock, attempt_timeout_s=attempt_timeout_s)
        ring_on = (env.get(RING_ENV) or "").strip().lower() not in ("false", "0", "no", "off")
        self._ring = Writer(ring_dir(env), self.port, token,
                            clock=clock) if ring_on and framed else None
        self._remaining_ms: Callable[[], float] | None = None
        self.request_id: str | None = None

    # -- invocation context -----------------------------------------------------------

    def begin(self, context: Any = None) -> None:
        """Note the invocation's request id and remaining-time function (the Lambda context)."""
        self.request_id = getattr(context, "aws_request_id", None)
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        self._remaining_ms = remaining if callable(remaining) else None

    def _budget_s(self) -> float:
        """Time one call may take: the invocation's remaining time minus a margin."""
        if self._remaining_ms is None:
            return self._timeout_s
        return max(0.0, float(self._remaining_ms()) / 1000 - _MARGIN_S)

    # -- API ------------------------------------------------------------------------------

    def send(self, records: Iterable[Mapping[str, Any]], *, wait: bool = False) -> SendResult:
        """Hand records over in batches of 1,000; each batch is accepted whole or not at all."""
        items = list(records)
        ids: list[str] = []
        outcomes: list[dict[str, Any]] = []
        for start in range(0, len(items), _BATCH):
            try:
                reply = self._post_records(items[start:start + _BATCH], wait=wait)
            except RelayUnavailable:
                if not self._fallback:
                    raise
                # Only what the extension did not take; its ids stay as it answered.
                taken = outcomes if wait else [
                    {"id": i, "outcome": Outcome.PENDING.value} for i in ids]
                return self._direct(items[start:], ids, taken)
            batch_ids: list[str] = reply.get("ids") or []
            ids += batch_ids
            if wait:  # else unused: building it cost ~0.5 µs per record
                outcomes += reply.get("outcomes") or [
                    {"id": i, "outcome": Outcome.PENDING.value} for i in batch_ids]
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
        query = f"?{TIMEOUT_PARAM}={timeout_ms}" if timeout_ms is not None else ""
        return self._call("POST", FLUSH_PATH + query, b"", 200)

    def status(self) -> dict[str, Any]:
        return self._call("GET", STATUS_PATH, None, 200)

    def invocation_end(self, request_id: str | None = None) -> None:
        """Tell the extension this invocation's handler is done. This runs every invocation:
        the request id goes as a header (no body), and on a recently used connection the
        handler does not wait for the answer (the extension answers after a thread switch
        in its process, milliseconds at 256 MB); it is read before that connection's next
        request, and a refusal then reported as a warning."""
        request_id = request_id or self.request_id
        request = self._transport.head("POST", INVOCATION_END_PATH, {
            REQUEST_ID_HEADER: request_id} if request_id else {}, 0)
        deadline = self._clock() + self._budget_s()
        if self._transport.post_unanswered(request, deadline):
            return
        status, _, data = self._transport.send(
            request, b"", deadline, what=f"POST {INVOCATION_END_PATH}", long_wait=False)
        if status != 200:
            _expect(status, _decode(data), 200)

    def close(self) -> None:
        """Close the idle connections (ones in use close when their request ends)."""
        self._transport.close()
        if self._ring is not None:
            self._ring.close()

    # -- requests -------------------------------------------------------------------------

    def _post_records(self, batch: Sequence[Mapping[str, Any]], *, wait: bool) -> dict[str, Any]:
        """One logical POST: one idempotency key for all its tries (a new one after a 429,
        which took nothing)."""
        body, content_type = _encode(batch, framed=self._framed)
        ring = self._ring if not wait and content_type == FRAMES_TYPE else None
        start = self._clock()
        deadline = start + self._budget_s()
        busy_deadline = min(deadline, start + _MAX_BUSY_S)
        key = self._new_key()
        backoff = 0.05
        while True:
            path = RECORDS_PATH
            if wait:
                # The extension never needs the invocation's deadline: we say how long to wait.
                wait_ms = int(max(0.0, deadline - self._clock() - _REPLY_MARGIN_S) * 1000)
                path += f"?{WAIT_PARAM}={WAIT_DELIVERED}&{TIMEOUT_PARAM}={wait_ms}"
            handed = None if ring is None else ring.exchange(
                body, self.request_id, deadline=deadline)
            headers: Mapping[str, str] = {}
            if handed is not None:
                status, reply = handed[0], _decode(handed[1])
            else:
                status, reply, headers = self._transport.exchange(
                    "POST", path, body, deadline,
                    {**self._context_headers(), "Content-Type": content_type,
                     IDEMPOTENCY_KEY_HEADER: key}, long_wait=wait)
            if status not in _RETRIED:
                return _expect(status, reply, 200 if wait else 202)
            pause = max(backoff, _retry_after_s(reply, headers))
            if self._clock() + pause > busy_deadline:
                if status == 507:
                    raise RelayStorageUnavailable(
                        f"kafka-relay could not write to its disk ({reply.get('error')}); the "
                        "records were NOT accepted: retry later (it recovers by itself once "
                        "writing works again)")
                raise RelayBusy(
                    f"kafka-relay's buffer stayed full ({reply.get('error')}); the records "
                    "were NOT accepted: retry later, send smaller batches, or raise "
                    "KAFKA_RELAY_MAX_BUFFER_RECORDS/KAFKA_RELAY_MAX_BUFFER_BYTES"
                )
            self._sleep(min(pause, _MAX_BACKOFF_S))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            key = self._new_key()

    def _call(self, method: str, path: str, body: bytes | None, wanted: int) -> dict[str, Any]:
        deadline = self._clock() + self._budget_s()
        status, reply, _ = self._transport.exchange(method, path, body, deadline,
                                                    self._context_headers(), long_wait=True)
        return _expect(status, reply, wanted)

    def _context_headers(self) -> dict[str, str]:
        return {REQUEST_ID_HEADER: self.request_id} if self.request_id else {}

    # -- direct fallback ------------------------------------------------------------------

    def _direct(
        self,
        items: Sequence[Mapping[str, Any]],
        ids: list[str],
        outcomes: list[dict[str, Any]],
    ) -> SendResult:
        """Produce ``items`` in-process; ``ids``/``outcomes`` are what the extension took
        (``pending`` where nobody waited for them: the extension owns them)."""
        # Imported here, by name: it needs confluent-kafka, and the client stays stdlib-only.
        direct = importlib.import_module("kafka_relay.direct")
        produced: list[dict[str, Any]] = direct.produce(
            items, env=self._env, request_id=self.request_id, timeout_s=self._budget_s())
        failed = sum(1 for o in produced if o["outcome"] == Outcome.FAILED.value)
        return SendResult(
            accepted=len(ids) + len(produced) - failed,
            ids=ids + [str(o["id"]) for o in produced],
            outcomes=outcomes + produced,
            failed=failed,
        )


def _unavailable(host: str, port: int, exc: BaseException) -> RelayUnavailable:
    return RelayUnavailable(
        f"no kafka-relay extension answers on {host}:{port} ({exc}): attach the "
        "kafka-relay layer to this function (its extensions/kafka-relay must be in the "
        f"layer), check the extension's init logs, and keep {PORT_ENV} the same for "
        f"function and extension; or set {FALLBACK_ENV}={FALLBACK_DIRECT}"
    )


def _encode(batch: Sequence[Mapping[str, Any]], *, framed: bool) -> tuple[bytes, str]:
    """The request body and its media type. Framed: each value is encoded here once, as it
    goes to Kafka."""
    if not framed:
        return json.dumps({"records": list(batch)}).encode(), JSON_TYPE
    try:
        return encode_frames(batch), FRAMES_TYPE
    except FrameError as exc:
        failure = exc
    # A batch with a bad record goes as JSON: the extension refuses it whole with one reason
    # per bad record (the encoder stops at the first, and cannot check topic names). What
    # JSON cannot carry either (NaN, bytes, a cycle) is refused here; nothing is sent.
    try:
        return json.dumps({"records": list(batch)}, allow_nan=False).encode(), JSON_TYPE
    except (TypeError, ValueError, RecursionError):
        raise RecordRejected(
            f"kafka-relay client: {failure}; nothing in this batch was sent",
            [{"index": failure.index, "reason": failure.reason}],
        ) from None


def _settle(conn: Connection, timeout: float) -> None:
    """Read the answers ``conn`` owes to end calls sent without waiting; a refusal is reported
    as the end call would have reported it. A connection the extension closes after one of
    them is not used for the next request (a retry takes a new one)."""
    for status, data in conn.settle(timeout):
        if status != 200:
            try:
                _expect(status, _decode(data), 200)
            except RelayError as exc:
                _warn_end_failed(exc)
    if conn.closing:
        raise Stale("kafka-relay closed the connection after an end call's answer")


def _warn_end_failed(exc: RelayError) -> None:
    # Never mask the handler's own result; the extension still has runtimeDone.
    print(json.dumps({"level": "WARNING", "event": "kafka_relay.end_failed",
                      "error": str(exc)}), file=sys.stderr)


def _expect(status: int, reply: dict[str, Any], wanted: int) -> dict[str, Any]:
    if status == wanted:
        return reply
    error = reply.get("error", reply)
    if status == 400:
        raise RecordRejected(
            f"kafka-relay rejected the request, nothing in it was accepted: "
            f"{reply.get('reasons') or error}",
            list(reply.get("reasons") or []),
        )
    if status == 401:
        raise RelayError(
            f"kafka-relay refused this client's token ({error}): the client sends the first "
            f"set of {', '.join(TOKEN_SOURCES)} in {TOKEN_HEADER}; give the function "
            f"and the extension the same {TOKEN_ENV}, or unset it on both"
        )
    if status == 413:
        raise BatchTooLarge(
            f"kafka-relay refused this batch as too large ({error}); nothing in it was "
            "accepted and retrying it as it is cannot help: send smaller batches",
            [{"index": -1, "reason": str(error)}],
        )
    if status == 503 and isinstance(reply.get(BROKER_FIELD), dict):
        raise BrokerUnavailable(str(error))
    if status == 503 and reply.get(REFUSAL_FIELD) == Refusal.NOT_RESTORED.value:
        raise RelayNotRestored(
            f"kafka-relay has not been restored from its SnapStart snapshot yet ({error}); the "
            "records were NOT accepted: send records from the handler, not during init")
    if status == 503:
        raise RelayShuttingDown(
            f"kafka-relay is shutting down and accepts no more records ({error}); the "
            "records were NOT accepted: send them again in the next invocation"
        )
    if status == 429:
        raise RelayBusy(f"kafka-relay is busy ({error}); retry later")
    raise RelayError(f"kafka-relay answered {status}: {error}")


def _decode(data: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(data or b"{}")
    except ValueError:
        return {"error": data[:200].decode(errors="replace")}
    return reply if isinstance(reply, dict) else {"error": str(reply)[:200]}


def _retry_after_s(reply: Mapping[str, Any], headers: Mapping[str, str]) -> float:
    try:
        if reply.get("retry_after_ms") is not None:
            return float(reply["retry_after_ms"]) / 1000
        return float(headers.get(RETRY_AFTER_HEADER) or 0)
    except (TypeError, ValueError):
        return 0.0


_default: RelayClient | None = None
_default_lock = threading.Lock()


def default_client() -> RelayClient:
    """The process-wide client (created once, on first use, by whichever thread comes first)."""
    global _default  # noqa: PLW0603 - one connection pool per process is the point
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = RelayClient()
            client = _default
    return client


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
            _warn_end_failed(exc)


def relay_handler(handler: _F) -> _F:
    """Decorate a Lambda handler so the extension learns when it returns or raises."""

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any = None) -> Any:
        with invocation(context):
            return handler(event, context)

    return wrapper  # type: ignore[return-value]
