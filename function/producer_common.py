"""What the producer functions share: env parsing, a retrying HTTP session, JSON log lines,
a bounded recency map, and the hand-off step (send, then commit state, then summarise).

Nothing here imports Kafka or the kafka-relay client: the handlers pass ``client.send`` in,
so this module and the fetch layers above it run (and are tested) without the extension.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, Protocol, TextIO, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

USER_AGENT = "kafka-relay-producer/0.1 (python-requests)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
WAIT_DELIVERED_VAR = "RELAY_WAIT_DELIVERED"
OUTCOMES = ("delivered", "dead_lettered", "spilled", "pending")
HANDOFF_RESERVE_S = 20.0
RESERVE_SHARE_MAX = 0.25

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

K = TypeVar("K")
V = TypeVar("V")


class ConfigError(ValueError):
    """A producer setting is missing or malformed; the message names the variable and the fix."""


# -- environment ------------------------------------------------------------------------


def env_text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def env_int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number: set it like {name}={default}"
        ) from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ConfigError(f"{name}={value} is out of range: use at least {minimum}{upper}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number: set it like {name}={default}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}={raw} is out of range: use a number of at least {minimum}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a switch: use true or false")


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list or a JSON list of strings; blanks and repeats dropped, order kept."""
    raw = env.get(name, "").strip()
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{name} starts with '[' but is not valid JSON ({exc}): write a JSON list of "
                'strings like ["https://a/feed"] or a comma-separated list'
            ) from exc
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{name} must be a JSON list of strings, got {raw[:80]!r}")
    else:
        items = raw.split(",")
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


def check_url(name: str, url: str) -> str:
    """``url`` if it is an http(s) URL with a host, else a ConfigError naming ``name``."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.split("/", 1)[0]:
        raise ConfigError(f"{name} holds {url!r}, which is not an http(s) URL: use https://host/...")
    return url


def env_base_url(env: Mapping[str, str], name: str, default: str) -> str:
    """A base URL that paths are appended to: its trailing slash dropped."""
    return check_url(name, env_text(env, name, default)).rstrip("/")


# -- HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts and the retry budget of one producer's HTTP calls."""

    connect_timeout_s: float = 3.05
    read_timeout_s: float = 10.0
    # The whole body of one response must arrive within this (and before the invocation's
    # deadline): a read timeout is per read, so a server dripping a byte at a time would
    # otherwise hold the run past its invocation.
    body_timeout_s: float = 20.0
    max_retries: int = 3
    backoff_s: float = 0.5
    retry_after_max_s: int = 30

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str) -> HttpSettings:
        """``<prefix>CONNECT_TIMEOUT_S``, ``READ_TIMEOUT_S``, ``BODY_TIMEOUT_S``,
        ``MAX_RETRIES``, ``BACKOFF_S``, ``RETRY_AFTER_MAX_S``: each producer is tuned on its
        own."""
        d = cls()
        return cls(
            connect_timeout_s=env_float(
                env, f"{prefix}CONNECT_TIMEOUT_S", d.connect_timeout_s, minimum=0.001
            ),
            read_timeout_s=env_float(
                env, f"{prefix}READ_TIMEOUT_S", d.read_timeout_s, minimum=0.001
            ),
            body_timeout_s=env_float(
                env, f"{prefix}BODY_TIMEOUT_S", d.body_timeout_s, minimum=0.001
            ),
            max_retries=env_int(env, f"{prefix}MAX_RETRIES", d.max_retries, minimum=0, maximum=10),
            backoff_s=env_float(env, f"{prefix}BACKOFF_S", d.backoff_s, minimum=0.0),
            retry_after_max_s=env_int(
                env, f"{prefix}RETRY_AFTER_MAX_S", d.retry_after_max_s, minimum=0, maximum=300
            ),
        )


def retrying_session(settings: HttpSettings, *, user_agent: str = USER_AGENT) -> requests.Session:
    """A session whose GETs retry 429/5xx and refused connections with exponential backoff.

    Retry-After is honoured (capped at ``retry_after_max_s`` so one server cannot eat the
    invocation). Read errors (timeouts, resets mid-response) are not retried: a server that
    is slow now is likely slow a second later, and the next scheduled run tries again anyway.
    After the last attempt the final response comes back as is, so callers report its status.
    """
    retry = Retry(
        total=settings.max_retries,
        connect=settings.max_retries,
        read=False,
        status=settings.max_retries,
        other=0,
        allowed_methods=frozenset({"GET"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_s,
        respect_retry_after_header=True,
        retry_after_max=settings.retry_after_max_s,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


def error_entry(source: str, kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    """One item of a summary's ``errors``: where, what kind, and the detail."""
    return {"source": source, "kind": kind, "error": detail, **extra}


def http_error(source: str, exc: requests.RequestException) -> dict[str, Any]:
    kind = "timeout" if isinstance(exc, requests.Timeout) else "connection"
    return error_entry(source, kind, f"{type(exc).__name__}: {exc}")


def status_error(source: str, response: requests.Response) -> dict[str, Any]:
    return error_entry(
        source, "http_status", f"HTTP {response.status_code} {response.reason}",
        status=response.status_code,
    )


class FetchFailed(Exception):
    """A request failed for good (after retries); ``entry`` is its summary error item."""

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(entry["error"])
        self.entry = entry


# GET url?params -> decoded JSON, or FetchFailed; the whole answer within the deadline. The
# producers take one so tests can serve recorded pages without a socket; in Lambda it is
# ``json_getter(session, settings)``.
GetJson = Callable[[str, Mapping[str, "str | int"], "Deadline"], Any]


def json_getter(session: requests.Session, settings: HttpSettings) -> GetJson:
    def get(url: str, params: Mapping[str, str | int], deadline: Deadline) -> Any:
        return get_json(session, url, params=params, settings=settings, deadline=deadline)

    return get


def get_json(
    session: requests.Session,
    url: str,
    *,
    params: Mapping[str, str | int],
    settings: HttpSettings,
    deadline: Deadline,
) -> Any:
    """The decoded JSON body of a 200, or FetchFailed saying what went wrong."""
    until = body_until(settings, deadline)
    try:
        with session.get(url, params=params, headers={"Accept": "application/json"},
                         timeout=request_timeout(settings, until, deadline.clock),
                         stream=True) as response:
            if response.status_code != 200:
                raise FetchFailed(status_error(url, response))
            body = read_body(response, source=url, settings=settings, until=until,
                             clock=deadline.clock)
    except requests.RequestException as exc:
        raise FetchFailed(http_error(url, exc)) from exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FetchFailed(error_entry(url, "malformed", f"the body is not JSON: {exc}")) from exc


_CHUNK = 64 * 1024


def _late(source: str, received: int) -> dict[str, Any]:
    return error_entry(source, "deadline",
                       f"the body did not arrive in time ({received} bytes in; the limit is "
                       "BODY_TIMEOUT_S and the invocation's remaining time)")


def body_until(settings: HttpSettings, deadline: Deadline) -> float:
    """When (``deadline.clock``) a response's whole body must have arrived: the per-fetch
    body timeout, never past the invocation's deadline."""
    own = deadline.clock() + settings.body_timeout_s
    return own if deadline.at is None else min(own, deadline.at)


def request_timeout(settings: HttpSettings, until: float,
                    clock: Callable[[], float]) -> tuple[float, float]:
    """requests' (connect, read) timeouts, neither longer than the time left until ``until``."""
    left = max(0.001, until - clock())
    return (min(settings.connect_timeout_s, left), min(settings.read_timeout_s, left))


def read_body(
    response: requests.Response,
    *,
    source: str,
    settings: HttpSettings,
    until: float,
    clock: Callable[[], float],
    max_bytes: int | None = None,
    too_large: str = "",
) -> bytes:
    """The whole body by ``until``, or FetchFailed (``deadline``; ``too_large`` past
    ``max_bytes``). Reads what has arrived (``read1``), never waits to fill a chunk, and
    shortens the socket's read timeout to the time left, so a drip or a stall ends on time."""
    body = bytearray()
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    while True:
        left = until - clock()
        if left <= 0:
            raise FetchFailed(_late(source, len(body)))
        if sock is not None:
            sock.settimeout(min(settings.read_timeout_s, left))
        try:
            chunk = response.raw.read1(_CHUNK, decode_content=True)
        except urllib3.exceptions.HTTPError as exc:  # what requests' iter_content would wrap
            if clock() >= until:
                raise FetchFailed(_late(source, len(body))) from exc
            kind = ("timeout" if isinstance(exc, urllib3.exceptions.TimeoutError)
                    else "connection")
            raise FetchFailed(error_entry(source, kind, f"{type(exc).__name__}: {exc}")) from exc
        if not chunk:
            return bytes(body)
        body += chunk
        if max_bytes is not None and len(body) > max_bytes:
            raise FetchFailed(error_entry(source, "too_large", too_large or
                                          f"the body is over {max_bytes} bytes"))


# -- time -------------------------------------------------------------------------------


def iso_utc(epoch_s: float) -> str:
    """``2024-05-01T12:00:00Z``: second precision, always UTC."""
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Deadline:
    """When to stop starting new fetches, leaving time to hand the records over."""

    at: float | None
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_context(
        cls, context: Any, *, reserve_s: float, clock: Callable[[], float] = time.monotonic
    ) -> Deadline:
        """``reserve_s`` before the invocation's end, but never more than a quarter of the
        time left, so short function timeouts still leave room to fetch."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if not callable(remaining):
            return cls(None, clock)
        left_s = remaining() / 1000
        return cls(clock() + left_s - min(reserve_s, left_s * RESERVE_SHARE_MAX), clock)

    def passed(self) -> bool:
        return self.at is not None and self.clock() >= self.at


NO_DEADLINE = Deadline(None)


# -- state ------------------------------------------------------------------------------


class RecentMap(Generic[K, V]):
    """A mapping that forgets its least recently written keys past ``capacity``.

    Warm Lambda environments live for hours; this keeps dedupe state bounded.
    """

    def __init__(self, capacity: int, items: Sequence[tuple[K, V]] = ()) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        for key, value in items:
            self.put(key, value)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def put_run(self, items: Sequence[tuple[K, V]]) -> None:
        """Write one run's items (the last most recent). Past ``capacity`` only older runs'
        keys are forgotten: a run larger than the capacity is kept whole until the next."""
        for key, value in items:
            self._items[key] = value
            self._items.move_to_end(key)
        keep = max(self.capacity, len(items))
        while len(self._items) > keep:
            self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def items(self) -> list[tuple[K, V]]:
        return list(self._items.items())


# -- logging ----------------------------------------------------------------------------


class JsonLog:
    """One JSON object per line (CloudWatch-friendly): ts, level, logger, event, request id."""

    def __init__(
        self,
        logger: str,
        *,
        request_id: str | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logger = logger
        self.request_id = request_id
        self._stream = stream
        self._clock = clock

    def log(self, level: str, event: str, **fields: Any) -> None:
        line: dict[str, Any] = {
            "ts": round(self._clock(), 3),
            "level": level,
            "logger": self.logger,
            "event": event,
        }
        if self.request_id is not None:
            line["request_id"] = self.request_id
        line.update(fields)
        stream = self._stream or sys.stdout
        stream.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
        stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self.log("INFO", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("WARNING", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("ERROR", event, **fields)


# -- hand-off ---------------------------------------------------------------------------


class Commit(Protocol):
    def __call__(self, accepted: Sequence[bool] | None = None, /) -> None:
        """Remember what was handed over: ``accepted[i]`` for ``records[i]`` (None: all)."""


def _commit_nothing(accepted: Sequence[bool] | None = None, /) -> None:
    return None


@dataclass
class Batch:
    """One run's records, what was counted on the way, and how to remember them once sent.

    ``commit`` updates the warm environment's state (validators, seen keys, last points) for
    the records the relay took (or delivered) only. It runs after the hand-off: were it to
    run first, or to remember a record that failed, the next run would skip what was never
    sent.
    """

    records: list[dict[str, Any]]
    fetched: int = 0
    skipped_duplicates: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    commit: Commit = _commit_nothing


class Accepted(Protocol):
    """What ``kafka_relay.client.send`` returns, as far as a summary needs it."""

    @property
    def accepted(self) -> int: ...

    @property
    def outcomes(self) -> list[dict[str, Any]] | None: ...

    @property
    def failed(self) -> int: ...

    def accepted_mask(self) -> list[bool]: ...


class Send(Protocol):
    """``kafka_relay.client.send``'s shape; tests pass a client bound to their relay."""

    def __call__(self, records: list[dict[str, Any]], /, *, wait: bool) -> Accepted: ...


class Poll(Protocol):
    def __call__(self, *, log: JsonLog, deadline: Deadline) -> Batch: ...


def summarise(
    batch: Batch, *, sent: int, outcomes: list[dict[str, Any]] | None, failed: int = 0
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "fetched": batch.fetched,
        "sent": sent,
        "failed": failed,  # not delivered (direct fallback): sent again by the next run
        "skipped_duplicates": batch.skipped_duplicates,
        "errors": batch.errors,
    }
    if outcomes is not None:
        for outcome in OUTCOMES:
            summary[outcome] = sum(1 for o in outcomes if o.get("outcome") == outcome)
    return summary


def deliver(batch: Batch, *, send: Send, wait: bool, log: JsonLog) -> dict[str, Any]:
    """Hand the batch to the relay, commit state, log and return the summary.

    A failed hand-off is logged with the counts and re-raised: the invocation fails, state is
    not committed, and Lambda's retry of the scheduled event fetches the same records again.
    """
    sent = failed = 0
    outcomes: list[dict[str, Any]] | None = [] if wait else None
    accepted: list[bool] = []
    if batch.records:
        try:
            result = send(batch.records, wait=wait)
        except Exception as exc:
            log.error(
                "run.handoff_failed",
                error=f"{type(exc).__name__}: {exc}",
                **summarise(batch, sent=0, outcomes=None),
            )
            raise
        sent, outcomes = result.accepted, result.outcomes if wait else None
        accepted = result.accepted_mask()
        if len(accepted) != len(batch.records):
            raise RuntimeError(f"the relay answered for {len(accepted)} of "
                               f"{len(batch.records)} records")
        failed = accepted.count(False)
        if failed:
            batch.errors.append(error_entry(
                "kafka-relay", "not_delivered",
                f"{failed} of {len(batch.records)} records were not delivered; they are not "
                "remembered, so the next run sends them again",
                records=failed,
            ))
    batch.commit(accepted)
    summary = summarise(batch, sent=sent, outcomes=outcomes, failed=failed)
    log.log("WARNING" if batch.errors else "INFO", "run.summary", **summary)
    return summary


def run_invocation(
    poll: Poll,
    context: Any,
    *,
    logger: str,
    send: Send,
    wait: bool,
    reserve_s: float = HANDOFF_RESERVE_S,
) -> dict[str, Any]:
    """One handler invocation: poll (stopping new fetches ``reserve_s`` before the
    invocation's timeout, so the hand-off still fits), then deliver."""
    log = JsonLog(logger, request_id=getattr(context, "aws_request_id", None))
    batch = poll(log=log, deadline=Deadline.from_context(context, reserve_s=reserve_s))
    return deliver(batch, send=send, wait=wait, log=log)
