"""Fetch RSS/Atom feeds and turn their entries into ``rss.events`` records (no relay here).

Per run, each configured feed is fetched with a conditional GET (``If-None-Match`` /
``If-Modified-Since`` from the previous 200), parsed by feedparser from the bytes fetched
(feedparser never touches the network), and its entries normalised to::

    {"source": feed URL, "guid": identity, "title": text, "link": URL | null,
     "published_at": "2024-05-01T12:00:00Z" | null, "summary": text | null,
     "fetched_at": "2024-05-01T12:00:03Z"}

- identity (``guid`` and the Kafka key): the entry's guid/id, else its link, else
  ``sha256:`` + a hash of title and published_at, so a guid-less item keeps its key;
- ``published_at``: published, else updated, else created, converted to UTC; null when the
  feed gives no parsable date (``fetched_at`` is always there);
- ``summary``: HTML is reduced to plain text (tags, scripts and styles dropped, entities
  decoded, whitespace collapsed) and cut to ``RSS_SUMMARY_MAX_CHARS``: consumers get text
  they can index or show without an HTML sanitiser, and records stay small;
- dedupe: an entry already sent from the same feed by this warm environment is skipped
  (bounded LRU of ``RSS_DEDUPE_CAPACITY`` (feed, identity) pairs; optionally persisted in
  ``RSS_STATE_PATH``). A cold start sends a feed's current entries again: delivery is
  at-least-once, so consumers de-duplicate by key.

A feed that times out (its whole body must arrive within ``RSS_BODY_TIMEOUT_S`` and the
invocation's remaining time), answers an error status or is not a feed is reported in the
run's ``errors`` and the other feeds carry on; so is an entry that cannot be normalised
(skipped), and a run that saw more entries than ``RSS_DEDUPE_CAPACITY`` (all of its entries
are remembered anyway: the capacity only ever forgets older runs' entries).
"""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import feedparser
import requests

from producer_common import (
    NO_DEADLINE,
    WAIT_DELIVERED_VAR,
    Batch,
    ConfigError,
    Deadline,
    FetchFailed,
    HttpSettings,
    JsonLog,
    RecentMap,
    body_until,
    check_url,
    env_bool,
    env_int,
    env_list,
    env_text,
    error_entry,
    http_error,
    iso_utc,
    read_body,
    request_timeout,
    retrying_session,
    status_error,
)

DEFAULT_TOPIC = "rss.events"
FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
_DATE_FIELDS = ("published_parsed", "updated_parsed", "created_parsed")
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
STATE_VERSION = 1


class FeedError(Exception):
    """The body could not be read as an RSS or Atom feed."""


class StateFileError(Exception):
    """RSS_STATE_PATH holds something other than this producer's state."""


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class RssConfig:
    feed_urls: tuple[str, ...]
    topic: str = DEFAULT_TOPIC
    http: HttpSettings = field(default_factory=HttpSettings)
    state_path: Path | None = None
    dedupe_capacity: int = 10_000
    summary_max_chars: int = 1000
    max_feed_bytes: int = 5 * 1024 * 1024
    wait_delivered: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RssConfig:
        urls = env_list(env, "RSS_FEED_URLS")
        if not urls:
            raise ConfigError(
                "RSS_FEED_URLS is not set: give the feeds to poll, comma-separated or as a JSON "
                "list, e.g. RSS_FEED_URLS=https://example.com/rss.xml,https://example.org/atom"
            )
        state_path = env.get("RSS_STATE_PATH", "").strip()
        d = cls(feed_urls=())
        return cls(
            feed_urls=tuple(check_url("RSS_FEED_URLS", url) for url in urls),
            topic=env_text(env, "KAFKA_TOPIC", DEFAULT_TOPIC),
            http=HttpSettings.from_env(env, "RSS_"),
            state_path=Path(state_path) if state_path else None,
            dedupe_capacity=env_int(
                env, "RSS_DEDUPE_CAPACITY", d.dedupe_capacity, minimum=1, maximum=1_000_000
            ),
            summary_max_chars=env_int(
                env, "RSS_SUMMARY_MAX_CHARS", d.summary_max_chars, minimum=1
            ),
            max_feed_bytes=env_int(env, "RSS_MAX_FEED_BYTES", d.max_feed_bytes, minimum=1024),
            wait_delivered=env_bool(env, WAIT_DELIVERED_VAR, False),
        )


# -- normalising ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    key: str
    value: dict[str, Any]


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style"})
    # Block boundaries become spaces so "<p>a</p><p>b</p>" reads "a b", not "ab".
    _BLOCK = frozenset({
        "address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
        "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol", "p", "pre", "section",
        "table", "td", "th", "tr", "ul",
    })

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(markup)
    extractor.close()
    return " ".join("".join(extractor.parts).split())


def _truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _detail_text(detail: Any) -> str:
    """Text of a feedparser ``*_detail`` / ``content`` item, HTML reduced to text."""
    if not isinstance(detail, Mapping):
        return ""
    value = detail.get("value")
    text = value if isinstance(value, str) else ""
    return html_to_text(text) if detail.get("type") in _HTML_TYPES else " ".join(text.split())


def entry_time(entry: Mapping[str, Any]) -> str | None:
    """published, else updated, else created, as UTC ISO-8601 (feedparser gives UTC tuples)."""
    for name in _DATE_FIELDS:
        parsed = entry.get(name)
        if parsed:
            try:
                return iso_utc(calendar.timegm(parsed))
            except (OverflowError, ValueError, TypeError, OSError):
                continue
    return None


def entry_summary(entry: Mapping[str, Any], max_chars: int) -> str | None:
    # summary_detail, not summary: feedparser answers entry["summary"] with the content
    # when there is none, but without its type.
    detail = entry.get("summary_detail") or (entry.get("content") or [None])[0]
    text = _detail_text(detail)
    return _truncate(text, max_chars) if text else None


def stable_key(title: str, published_at: str | None) -> str:
    digest = hashlib.sha256(f"{title}\n{published_at or ''}".encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def normalise_entry(
    entry: Mapping[str, Any], *, source: str, fetched_at: str, summary_max_chars: int
) -> Item:
    title = _detail_text(entry.get("title_detail"))
    link = (entry.get("link") or "").strip() or None
    published_at = entry_time(entry)
    guid = (entry.get("id") or "").strip() or None
    key = guid or link or stable_key(title, published_at)
    return Item(key, {
        "source": source,
        "guid": key,
        "title": title,
        "link": link,
        "published_at": published_at,
        "summary": entry_summary(entry, summary_max_chars),
        "fetched_at": fetched_at,
    })


@dataclass(frozen=True)
class ParsedFeed:
    items: list[Item]
    warning: str | None = None  # feedparser's complaint about a feed it could still read
    skipped: tuple[str, ...] = ()  # why each entry that could not be normalised was left out


def parse_feed(
    body: bytes,
    *,
    source: str,
    fetched_at: str,
    content_type: str | None = None,
    summary_max_chars: int = RssConfig.summary_max_chars,
) -> ParsedFeed:
    headers = {"content-location": source}
    if content_type:
        headers["content-type"] = content_type
    # A stream, not bytes: feedparser tries a bytes argument as a file name first.
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    entries = parsed.get("entries") or []
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if isinstance(problem, feedparser.NonXMLContentType):
        problem = None  # servers often label feeds text/html or text/plain; the XML decides
    if not entries and problem is not None:
        raise FeedError(f"not a well-formed feed: {type(problem).__name__}: {problem}")
    if not entries and not parsed.get("version"):
        raise FeedError("the response is neither RSS nor Atom")
    items = []
    skipped = []
    for index, entry in enumerate(entries):
        try:
            items.append(normalise_entry(entry, source=source, fetched_at=fetched_at,
                                         summary_max_chars=summary_max_chars))
        except Exception as exc:  # one odd entry must not cost the feed its other entries
            skipped.append(f"entry {index}: {type(exc).__name__}: {exc}")
    return ParsedFeed(items, None if problem is None else f"{type(problem).__name__}: {problem}",
                      tuple(skipped))


# -- fetching ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Validators:
    """What a 200 said about its version, sent back so an unchanged feed costs a 304."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Validators:
        return cls(headers.get("ETag"), headers.get("Last-Modified"))

    def request_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True)
class FeedResponse:
    url: str
    body: bytes | None = None
    content_type: str | None = None
    validators: Validators = field(default_factory=Validators)
    not_modified: bool = False
    error: dict[str, Any] | None = None


def fetch_feed(
    session: requests.Session,
    url: str,
    *,
    validators: Validators | None,
    settings: HttpSettings,
    max_bytes: int,
    deadline: Deadline = NO_DEADLINE,
) -> FeedResponse:
    headers = {"Accept": FEED_ACCEPT, **(validators or Validators()).request_headers()}
    until = body_until(settings, deadline)
    try:
        with session.get(url, headers=headers, stream=True,
                         timeout=request_timeout(settings, until, deadline.clock)) as response:
            if response.status_code == 304:
                return FeedResponse(url, not_modified=True)
            if not response.ok:
                return FeedResponse(url, error=status_error(url, response))
            body = read_body(response, source=url, settings=settings, until=until,
                             clock=deadline.clock, max_bytes=max_bytes,
                             too_large=f"the feed is over {max_bytes} bytes: raise "
                                       "RSS_MAX_FEED_BYTES to take it")
            return FeedResponse(
                url,
                body=body,
                content_type=response.headers.get("Content-Type"),
                validators=Validators.from_headers(response.headers),
            )
    except FetchFailed as exc:
        return FeedResponse(url, error=exc.entry)
    except requests.RequestException as exc:
        return FeedResponse(url, error=http_error(url, exc))


# -- state across warm invocations ------------------------------------------------------


Seen = tuple[str, str]  # (feed URL, identity)


@dataclass
class RssState:
    seen: RecentMap[Seen, None]
    validators: dict[str, Validators] = field(default_factory=dict)

    @classmethod
    def empty(cls, capacity: int) -> RssState:
        return cls(RecentMap(capacity))

    @classmethod
    def read(cls, path: Path, *, capacity: int) -> RssState:
        """The state saved at ``path``; empty when there is no file yet."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
            seen = [(str(source), str(key)) for source, key in data["seen"]]
            validators = {
                str(url): Validators(v.get("etag"), v.get("last_modified"))
                for url, v in data["validators"].items()
            }
        except FileNotFoundError:
            return cls.empty(capacity)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateFileError(
                f"RSS_STATE_PATH={path} is not a readable rss producer state ({exc}): delete "
                "the file or point RSS_STATE_PATH elsewhere; starting with empty state"
            ) from exc
        return cls(RecentMap(capacity, [(s, None) for s in seen]), validators)

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically, so a crash never leaves half a state file."""
        data = {
            "version": STATE_VERSION,
            "validators": {
                url: {"etag": v.etag, "last_modified": v.last_modified}
                for url, v in self.validators.items()
            },
            "seen": [list(ident) for ident in self.seen],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_state(config: RssConfig, log: JsonLog) -> RssState:
    if config.state_path is None:
        return RssState.empty(config.dedupe_capacity)
    try:
        return RssState.read(config.state_path, capacity=config.dedupe_capacity)
    except StateFileError as exc:
        log.warning("state.unreadable", error=str(exc))
        return RssState.empty(config.dedupe_capacity)


# -- one run ----------------------------------------------------------------------------


# (feed URL, validators of the last 200, the run's deadline) -> the response. The producer
# takes one so tests can serve recorded feeds without a socket; in Lambda it is
# ``feed_fetcher(session, config)``.
FeedFetcher = Callable[[str, "Validators | None", Deadline], FeedResponse]


def feed_fetcher(session: requests.Session, config: RssConfig) -> FeedFetcher:
    def fetch(url: str, validators: Validators | None, deadline: Deadline) -> FeedResponse:
        return fetch_feed(
            session,
            url,
            validators=validators,
            settings=config.http,
            max_bytes=config.max_feed_bytes,
            deadline=deadline,
        )

    return fetch


class RssProducer:
    """Polls the configured feeds; holds the fetcher and state of a warm environment."""

    def __init__(
        self,
        config: RssConfig,
        *,
        fetch: FeedFetcher | None = None,
        state: RssState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.fetch = fetch or feed_fetcher(retrying_session(config.http), config)
        self.state = state or RssState.empty(config.dedupe_capacity)
        self._clock = clock

    def poll(self, *, log: JsonLog, deadline: Deadline = NO_DEADLINE) -> Batch:
        """Fetch every feed; the records are new entries, ``commit`` remembers them."""
        fetched_at = iso_utc(self._clock())
        batch = Batch(records=[])
        sightings: dict[Seen, None] = {}  # feed order (newest first); committed reversed
        sent: list[Seen] = []  # the identity of each record, in batch.records order
        new_validators: dict[str, Validators] = {}
        for url in self.config.feed_urls:
            if deadline.passed():
                batch.errors.append(error_entry(
                    url, "deadline", "not fetched: the invocation is close to its timeout"
                ))
                continue
            fetched = self._fetch(url, batch=batch, fetched_at=fetched_at, log=log,
                                  deadline=deadline)
            if fetched is None:
                continue
            items, new_validators[url] = fetched
            new = 0
            for item in items:
                ident = (url, item.key)
                if ident in self.state.seen or ident in sightings:
                    batch.skipped_duplicates += 1
                else:
                    batch.records.append(
                        {"topic": self.config.topic, "key": item.key, "value": item.value}
                    )
                    sent.append(ident)
                    new += 1
                sightings[ident] = None
            log.info("feed.fetched", source=url, entries=len(items), new=new)
        capacity = self.config.dedupe_capacity
        if len(sightings) > capacity:
            batch.errors.append(error_entry(
                "rss", "dedupe_capacity",
                f"this run saw {len(sightings)} entries, more than RSS_DEDUPE_CAPACITY="
                f"{capacity}: all are remembered until the next run, but raise "
                "RSS_DEDUPE_CAPACITY above the entries of all feeds together",
                entries=len(sightings)))

        def commit(accepted: Sequence[bool] | None = None, /) -> None:
            lost = set() if accepted is None else {
                ident for ident, ok in zip(sent, accepted, strict=True) if not ok}
            # A feed with an entry not handed over keeps its old validators: a 304 next
            # time would hide that entry.
            lost_feeds = {url for url, _ in lost}
            self.state.validators.update(
                {url: v for url, v in new_validators.items() if url not in lost_feeds})
            # Re-sighted entries are refreshed too, so items still in a feed stay remembered;
            # none of this run's is forgotten for another of its own (only older runs').
            self.state.seen.put_run([(ident, None) for ident in reversed(sightings)
                                     if ident not in lost])
            if self.config.state_path is not None:
                try:
                    self.state.write(self.config.state_path)
                except OSError as exc:
                    log.warning("state.write_failed", path=str(self.config.state_path),
                                error=str(exc))

        batch.commit = commit
        return batch

    def _fetch(
        self, url: str, *, batch: Batch, fetched_at: str, log: JsonLog, deadline: Deadline
    ) -> tuple[list[Item], Validators] | None:
        response = self.fetch(url, self.state.validators.get(url), deadline)
        if response.error is not None:
            batch.errors.append(response.error)
            log.warning("feed.failed", **response.error)
            return None
        if response.not_modified or response.body is None:
            log.info("feed.not_modified", source=url)
            return None
        try:
            parsed = parse_feed(
                response.body,
                source=url,
                fetched_at=fetched_at,
                content_type=response.content_type,
                summary_max_chars=self.config.summary_max_chars,
            )
        except FeedError as exc:
            error = error_entry(url, "malformed", str(exc))
            batch.errors.append(error)
            log.warning("feed.failed", **error)
            return None
        if parsed.warning:
            log.warning("feed.partly_malformed", source=url, error=parsed.warning,
                        entries=len(parsed.items))
        if parsed.skipped:
            error = error_entry(url, "bad_item", parsed.skipped[0], items=len(parsed.skipped))
            batch.errors.append(error)
            log.warning("feed.items_skipped", **error)
        batch.fetched += len(parsed.items)
        return parsed.items, response.validators
