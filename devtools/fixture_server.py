"""A loopback HTTP server standing in for the producer functions' upstreams.

It serves the recorded fixtures under ``devtools/fixtures/`` (GET only)::

    /rss/<file>                  devtools/fixtures/rss/<file>, with ETag and Last-Modified;
                                 304 when If-None-Match (or, without it, If-Modified-Since)
                                 matches
    /gamma/markets               devtools/fixtures/polymarket/markets.json like the Gamma API:
                                 active / closed filters, order + ascending, limit / offset
    /clob/prices-history         devtools/fixtures/polymarket/prices_history.json like the CLOB:
                                 ?market=<token id>[&startTs=&endTs=] -> {"history": [...]};
                                 interval and fidelity are accepted and ignored

and lets tests break it per path::

    with FixtureServer() as server:
        server.fault("/rss/world_news_rss2.xml", status=503, times=2, retry_after="1")
        server.fault("/rss/markets_atom.xml", delay_s=5)            # a slow upstream
        server.fault("/gamma/markets", body=b"[{", times=1)         # a malformed body
        server.fault("/clob/prices-history", status=500, times=None, query={"market": token})
        server.put("/rss/world_news_rss2.xml", new_bytes)           # the feed changed
        server.hits("/rss/world_news_rss2.xml")                     # what clients asked

``python -m devtools.fixture_server [--port N]`` prints the base URL on its first line, then
the producers' environment (``RSS_FEED_URLS=...`` etc.), and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from devtools.service import Service

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The feeds a healthy demo polls; malformed.xml is there for fault tests.
FEEDS = ("world_news_rss2.xml", "markets_atom.xml", "no_guids_rss2.xml", "timezones_rss2.xml")
# What the recorded feeds claim as their last change (they were captured on this day).
RECORDED_AT = 1714565100.0  # 2024-05-01T12:05:00Z
GAMMA_DEFAULT_LIMIT = 20
_CONTENT_TYPES = {".xml": "application/rss+xml; charset=utf-8", ".json": "application/json"}


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    at: float  # time.monotonic() when it arrived


@dataclass
class Fault:
    status: int | None = None
    retry_after: str | None = None
    delay_s: float = 0.0
    body: bytes | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    times: int | None = 1  # None: until cleared
    drip_s: float = 0.0  # the body goes one byte at a time, this long apart

    def matches(self, query: Mapping[str, str]) -> bool:
        return all(query.get(k) == v for k, v in self.query.items())


@dataclass(frozen=True)
class Resource:
    body: bytes
    content_type: str
    modified_at: float

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.modified_at, usegmt=True)

    def unchanged_for(self, headers: Message) -> bool:
        """RFC 9110: If-None-Match decides when present; else If-Modified-Since."""
        if_none_match = headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [tag.strip() for tag in if_none_match.split(",")]
            return "*" in tags or self.etag in tags
        since = headers.get("If-Modified-Since")
        if since is None:
            return False
        try:
            return int(self.modified_at) <= email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drip_s: float = 0.0


def _json_reply(status: int, data: Any) -> Reply:
    return Reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


class FixtureServer(Service):
    def __init__(self, root: Path = FIXTURES, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: dict[str, list[Fault]] = {}
        self._hits: list[Hit] = []
        self._resources = {
            f"/rss/{path.name}": Resource(
                path.read_bytes(), _CONTENT_TYPES.get(path.suffix, "text/plain"), RECORDED_AT
            )
            for path in sorted((root / "rss").iterdir())
            if path.is_file()
        }
        self._markets: list[dict[str, Any]] = json.loads(
            (root / "polymarket" / "markets.json").read_text(encoding="utf-8")
        )
        self._history: dict[str, list[dict[str, Any]]] = json.loads(
            (root / "polymarket" / "prices_history.json").read_text(encoding="utf-8")
        )
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fixtures = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="fixture-server", daemon=True,
        )

    # -- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def gamma_url(self) -> str:
        return f"{self.url}/gamma"

    @property
    def clob_url(self) -> str:
        return f"{self.url}/clob"

    def feed_url(self, name: str) -> str:
        return f"{self.url}/rss/{name}"

    def env(self, feeds: tuple[str, ...] = FEEDS) -> dict[str, str]:
        """The producers' environment pointing at this server."""
        return {
            "RSS_FEED_URLS": ",".join(self.feed_url(name) for name in feeds),
            "POLYMARKET_GAMMA_URL": self.gamma_url,
            "POLYMARKET_CLOB_URL": self.clob_url,
        }

    # -- control --------------------------------------------------------------------------

    def start(self) -> FixtureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends injected delays at once
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


    @property
    def stopping(self) -> threading.Event:
        """Set by ``stop``: injected delays and drips end at once."""
        return self._stopping

    def fault(
        self,
        path: str,
        *,
        status: int | None = None,
        retry_after: str | None = None,
        delay_s: float = 0.0,
        body: bytes | None = None,
        query: Mapping[str, str] | None = None,
        times: int | None = 1,
        drip_s: float = 0.0,
    ) -> None:
        """The next ``times`` requests to ``path`` (whose query has ``query``) wait ``delay_s``,
        then answer ``status`` (with Retry-After) or 200 with ``body``, or the fixture; with
        ``drip_s`` the body is sent a byte at a time, ``drip_s`` apart (a slow-drip upstream)."""
        with self._lock:
            self._faults.setdefault(path, []).append(
                Fault(status, retry_after, delay_s, body, dict(query or {}), times, drip_s)
            )

    def put(self, path: str, body: bytes, *, content_type: str | None = None) -> None:
        """Serve ``body`` at ``path`` from now on, as a new version (new ETag, later date)."""
        with self._lock:
            old = self._resources.get(path)
            modified = max(time.time(), (old.modified_at + 1) if old else 0.0)
            kind = content_type or (old.content_type if old else _CONTENT_TYPES[".xml"])
            self._resources[path] = Resource(body, kind, modified)

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._lock:
            return [hit for hit in self._hits if path is None or hit.path == path]

    # -- serving (handler threads) --------------------------------------------------------

    def respond(self, method: str, target: str, headers: Message) -> Reply:
        split = urlsplit(target)
        path, query = split.path, dict(parse_qsl(split.query))
        arrived = time.monotonic()
        fault = self._take_fault(path, query)
        if fault is not None and fault.delay_s:
            self._stopping.wait(fault.delay_s)
        if method != "GET":
            reply = _json_reply(405, {"error": "only GET is served"})
        elif fault is not None and fault.status is not None:
            reply = _json_reply(fault.status, {"error": "injected fault"})
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = fault.retry_after
        elif fault is not None and fault.body is not None:
            reply = Reply(200, fault.body, {"Content-Type": self._content_type(path)})
        else:
            reply = self._route(path, query, headers)
        if fault is not None and fault.drip_s:
            reply = Reply(reply.status, reply.body, reply.headers, fault.drip_s)
        with self._lock:
            self._hits.append(
                Hit(method, path, query, dict(headers.items()), reply.status, arrived)
            )
        return reply

    def _take_fault(self, path: str, query: Mapping[str, str]) -> Fault | None:
        with self._lock:
            for fault in self._faults.get(path, []):
                if fault.matches(query) and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _content_type(self, path: str) -> str:
        resource = self._resources.get(path)
        return resource.content_type if resource else "application/json"

    def _route(self, path: str, query: Mapping[str, str], headers: Message) -> Reply:
        if path.startswith("/rss/"):
            with self._lock:
                resource = self._resources.get(path)
            if resource is None:
                return Reply(404, b"no such feed", {"Content-Type": "text/plain"})
            validators = {"ETag": resource.etag, "Last-Modified": resource.last_modified}
            if resource.unchanged_for(headers):
                return Reply(304, b"", validators)
            return Reply(200, resource.body, {"Content-Type": resource.content_type, **validators})
        try:
            if path == "/gamma/markets":
                return _json_reply(200, self._gamma_markets(query))
            if path == "/clob/prices-history":
                return self._prices_history(query)
        except ValueError as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(404, {"error": f"no route for {path}"})

    def _gamma_markets(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        markets = list(self._markets)
        for flag in ("active", "closed"):
            if flag in query:
                wanted = query[flag].lower() == "true"
                markets = [m for m in markets if bool(m.get(flag)) is wanted]
        if "order" in query:
            order = query["order"]
            descending = query.get("ascending", "true").lower() == "false"
            markets.sort(key=lambda m: float(m.get(order) or 0), reverse=descending)
        limit = _int(query, "limit", GAMMA_DEFAULT_LIMIT)
        offset = _int(query, "offset", 0)
        return markets[offset:offset + limit]

    def _prices_history(self, query: Mapping[str, str]) -> Reply:
        token = query.get("market")
        if not token:
            return _json_reply(400, {"error": "market (the CLOB token id) is required"})
        start = _int(query, "startTs", 0)
        end = _int(query, "endTs", 2**63)
        points = [p for p in self._history.get(token, []) if start <= p["t"] <= end]
        return _json_reply(200, {"history": points})


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{name}={value} is negative")
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler stuck in an injected delay must not hold up stop()
    fixtures: FixtureServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real upstreams and requests' pool use
    # Without TCP_NODELAY, Nagle holds each keep-alive reply's body ~40 ms behind its headers.
    disable_nagle_algorithm = True
    timeout = 10  # idle keep-alive connections end on their own
    server: _Server

    def _serve(self) -> None:
        reply = self.server.fixtures.respond(self.command, self.path, self.headers)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self._write_body(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its read timeout)

    def _write_body(self, reply: Reply) -> None:
        if not reply.drip_s:
            self.wfile.write(reply.body)
            return
        stopping = self.server.fixtures.stopping
        for index in range(len(reply.body)):
            if stopping.wait(reply.drip_s):
                self.close_connection = True
                return
            self.wfile.write(reply.body[index:index + 1])
            self.wfile.flush()

    do_GET = do_HEAD = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``hits()`` instead."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fixture_server",
        description="Serve the RSS, Gamma and CLOB fixtures on loopback until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    with FixtureServer(host=args.host, port=args.port) as server:
        print(server.url)
        for name, value in server.env().items():
            print(f"{name}={value}")
        sys.stdout.flush()
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
