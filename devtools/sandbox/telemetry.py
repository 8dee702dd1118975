"""The Telemetry API's delivery side: subscriptions, buffering, POSTs of JSON event arrays.

An extension subscribes with ``PUT /2022-07-01/telemetry``; from then on
every event of the types it asked for (``platform``, ``function``,
``extension``) is buffered and POSTed to its destination as one JSON array
when ``buffering.maxItems`` or ``maxBytes`` is reached or the oldest event is
``timeoutMs`` old. Events since the start of init are kept, so a subscriber
that subscribes during init still gets ``platform.initStart`` (as in Lambda).

While the environment is frozen nothing is delivered: ``pause()`` waits for
in-flight POSTs, and buffered events go out after ``resume()``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

#: Lambda's internal host name, and the loopback names we also deliver to.
LOOPBACK_HOSTS = frozenset({"sandbox.localdomain", "127.0.0.1", "localhost"})
TYPES = frozenset({"platform", "function", "extension"})
SCHEMA_VERSIONS = frozenset({"2022-07-01", "2022-12-13", "2025-01-29"})
_BACKLOG = 10_000
_POST_TIMEOUT_S = 2.0
_POST_ATTEMPTS = 3


class TelemetryRequestError(ValueError):
    """A subscription request Lambda would refuse (400); the message says which field."""


def iso_time(wall_s: float) -> str:
    """Lambda's timestamp format: UTC, millisecond precision, ``Z``."""
    moment = datetime.fromtimestamp(wall_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Buffering:
    max_items: int = 1000
    max_bytes: int = 262_144
    timeout_ms: int = 1000

    @classmethod
    def parse(cls, raw: Any) -> Buffering:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise TelemetryRequestError("buffering must be an object")
        limits = (("maxItems", 25, 10_000, cls.max_items),
                  ("maxBytes", 262_144, 1_048_576, cls.max_bytes),
                  ("timeoutMs", 25, 30_000, cls.timeout_ms))
        values = []
        for key, low, high, default in limits:
            value = raw.get(key, default)
            if not isinstance(value, int) or not low <= value <= high:
                raise TelemetryRequestError(
                    f"buffering.{key} must be an integer in [{low}, {high}], got {value!r}"
                )
            values.append(value)
        return cls(*values)


@dataclass(frozen=True)
class Destination:
    uri: str
    port: int
    path: str
    host: str = "127.0.0.1"  # sandbox.localdomain resolves here, as it does inside Lambda

    @classmethod
    def parse(cls, raw: Any) -> Destination:
        if not isinstance(raw, dict) or raw.get("protocol") != "HTTP":
            raise TelemetryRequestError(
                'destination must be {"protocol": "HTTP", "URI": ...} '
                "(this sandbox speaks HTTP only)"
            )
        uri = raw.get("URI")
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if parts is None or parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
            raise TelemetryRequestError(
                f"destination.URI must be http://sandbox.localdomain:PORT/PATH, got {uri!r}"
            )
        if parts.port is None:
            raise TelemetryRequestError(f"destination.URI needs an explicit port, got {uri!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(uri=str(uri), port=parts.port, path=path)


def http_post(destination: Destination, body: bytes) -> None:
    conn = http.client.HTTPConnection(destination.host, destination.port, timeout=_POST_TIMEOUT_S)
    try:
        conn.request("POST", destination.path, body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status >= 300:
            raise OSError(f"telemetry destination answered {response.status}")
    finally:
        conn.close()


Poster = Callable[[Destination, bytes], None]


@dataclass
class _Subscriber:
    name: str
    destination: Destination
    types: frozenset[str]
    buffering: Buffering
    buffer: deque[tuple[dict[str, Any], int]] = field(default_factory=deque)
    buffered_bytes: int = 0
    first_at: float = 0.0
    stopped: bool = False
    delivered: int = 0
    failed: int = 0

    def add(self, event: dict[str, Any], size: int, now: float) -> None:
        if not self.buffer:
            self.first_at = now
        self.buffer.append((event, size))
        self.buffered_bytes += size

    def take(self, now: float) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        size = 0
        while self.buffer and len(batch) < self.buffering.max_items:
            event, event_size = self.buffer[0]
            if batch and size + event_size > self.buffering.max_bytes:
                break
            self.buffer.popleft()
            self.buffered_bytes -= event_size
            batch.append(event)
            size += event_size
        self.first_at = now
        return batch


class TelemetryHub:
    def __init__(
        self,
        *,
        post: Poster = http_post,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._post = post
        self._monotonic = monotonic
        self._wall = wall
        self._cond = threading.Condition()
        self._subscribers: dict[str, _Subscriber] = {}
        self._backlog: deque[tuple[str, dict[str, Any], int]] = deque(maxlen=_BACKLOG)
        self._paused = False
        self._closed = False
        self._in_flight = 0

    def subscribe(self, name: str, body: Any) -> None:
        """Validate a subscription body as Lambda does; replace ``name``'s earlier one."""
        if not isinstance(body, dict):
            raise TelemetryRequestError("the subscription body must be a JSON object")
        if body.get("schemaVersion") not in SCHEMA_VERSIONS:
            raise TelemetryRequestError(
                f"schemaVersion must be one of {sorted(SCHEMA_VERSIONS)}, "
                f"got {body.get('schemaVersion')!r}"
            )
        types = body.get("types")
        if not isinstance(types, list) or not types or not set(types) <= TYPES:
            raise TelemetryRequestError(f"types must be a non-empty subset of {sorted(TYPES)}")
        subscriber = _Subscriber(name, Destination.parse(body.get("destination")),
                                 frozenset(types), Buffering.parse(body.get("buffering")))
        with self._cond:
            old = self._subscribers.get(name)
            if old is not None:
                old.stopped = True
            self._subscribers[name] = subscriber
            now = self._monotonic()
            for category, event, size in self._backlog:
                if category in subscriber.types:
                    subscriber.add(event, size, now)
            self._cond.notify_all()
        threading.Thread(target=self._deliver, args=(subscriber,), daemon=True,
                         name=f"sandbox-telemetry-{name}").start()

    def emit(
        self, category: str, event_type: str, record: Any, *, wall: float | None = None
    ) -> None:
        event = {"time": iso_time(self._wall() if wall is None else wall),
                 "type": event_type, "record": record}
        size = len(json.dumps(event))
        with self._cond:
            if self._closed:
                return
            self._backlog.append((category, event, size))
            now = self._monotonic()
            for subscriber in self._subscribers.values():
                if category in subscriber.types:
                    subscriber.add(event, size, now)
            self._cond.notify_all()

    def pause(self, timeout_s: float = 1.0) -> None:
        """Stop delivering (the environment freezes): wait for POSTs in flight, bounded."""
        deadline = self._monotonic() + timeout_s
        with self._cond:
            self._paused = True
            while self._in_flight and (remaining := deadline - self._monotonic()) > 0:
                self._cond.wait(remaining)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per subscriber: events delivered, batches failed, events still buffered."""
        with self._cond:
            return {name: {"delivered": s.delivered, "failed": s.failed, "buffered": len(s.buffer)}
                    for name, s in self._subscribers.items()}

    def _deliver(self, subscriber: _Subscriber) -> None:
        while True:
            with self._cond:
                batch = self._next_batch(subscriber)
                if batch is None:
                    return
                self._in_flight += 1
            ok = self._post_with_retries(subscriber.destination, json.dumps(batch).encode())
            with self._cond:
                self._in_flight -= 1
                if ok:
                    subscriber.delivered += len(batch)
                else:
                    subscriber.failed += 1
                self._cond.notify_all()

    def _next_batch(self, subscriber: _Subscriber) -> list[dict[str, Any]] | None:
        while not (self._closed or subscriber.stopped):
            if not subscriber.buffer or self._paused:
                self._cond.wait()
                continue
            full = (len(subscriber.buffer) >= subscriber.buffering.max_items
                    or subscriber.buffered_bytes >= subscriber.buffering.max_bytes)
            waited = self._monotonic() - subscriber.first_at
            timeout_s = subscriber.buffering.timeout_ms / 1000
            if full or waited >= timeout_s:
                return subscriber.take(self._monotonic())
            self._cond.wait(timeout_s - waited)
        return None

    def _post_with_retries(self, destination: Destination, body: bytes) -> bool:
        for attempt in range(_POST_ATTEMPTS):
            try:
                self._post(destination, body)
                return True
            except (OSError, http.client.HTTPException):
                # A subscriber that is still binding its listener gets another chance.
                time.sleep(0.02 * (attempt + 1))
        return False
