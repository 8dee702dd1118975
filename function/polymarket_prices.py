"""Fetch Polymarket markets and hourly prices into ``polymarket.price_hourly`` records.

Per run: page through the Gamma API's open markets
(``GET {gamma}/markets?active=true&closed=false&limit=..&offset=..``, ordered by 24 h volume,
at most ``POLYMARKET_MAX_MARKETS``), decode their JSON-encoded ``outcomes`` /
``clobTokenIds`` / ``outcomePrices`` and pair them by position; then for every outcome token
read the CLOB's hourly price history over the last ``POLYMARKET_HISTORY_INTERVAL``
(``GET {clob}/prices-history?market=<token>&interval=6h&fidelity=60``). One record per token
per hourly point::

    key = market id (a market's outcomes share a partition, so they stay in order)
    {"market_id": "253591", "token_id": "7123...", "outcome": "Yes", "question": "...",
     "price": 0.62, "ts": "2024-05-01T12:00:00Z", "source": "clob.prices-history"}

Emitted: every point in the window newer than the last one this warm environment sent for
that token (so a missed run is filled in from the window; a cold start sends the whole
window again, and consumers de-duplicate by (token_id, ts)). The newest point may be the
still-open hour. A token with no trade history yet gets one point from Gamma's
``outcomePrices`` at the current hour (``source: "gamma.outcomePrices"``).

A page, market, token or history point that fails is reported in ``errors`` and skipped;
the rest carry on. Every fetch's whole body must arrive within ``POLYMARKET_BODY_TIMEOUT_S``
and the invocation's remaining time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from producer_common import (
    NO_DEADLINE,
    WAIT_DELIVERED_VAR,
    Batch,
    ConfigError,
    Deadline,
    FetchFailed,
    GetJson,
    HttpSettings,
    JsonLog,
    RecentMap,
    env_base_url,
    env_bool,
    env_int,
    env_text,
    error_entry,
    iso_utc,
    json_getter,
    retrying_session,
)

DEFAULT_TOPIC = "polymarket.price_hourly"
DEFAULT_GAMMA_URL = "https://gamma-api.polymarket.com"
DEFAULT_CLOB_URL = "https://clob.polymarket.com"
INTERVALS = ("1h", "6h", "1d", "1w", "1m", "max")
HOURLY_FIDELITY_MIN = 60
SOURCE_HISTORY = "clob.prices-history"
SOURCE_GAMMA = "gamma.outcomePrices"
NO_ORDER = "none"


class MarketFormatError(ValueError):
    """A Gamma market whose outcomes, token ids and prices cannot be paired."""


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class PolymarketConfig:
    gamma_url: str = DEFAULT_GAMMA_URL
    clob_url: str = DEFAULT_CLOB_URL
    topic: str = DEFAULT_TOPIC
    http: HttpSettings = field(default_factory=HttpSettings)
    max_markets: int = 50
    page_size: int = 100
    order: str | None = "volume24hr"
    history_interval: str = "6h"
    token_capacity: int = 10_000
    wait_delivered: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PolymarketConfig:
        d = cls()
        interval = env_text(env, "POLYMARKET_HISTORY_INTERVAL", d.history_interval)
        if interval not in INTERVALS:
            raise ConfigError(
                f"POLYMARKET_HISTORY_INTERVAL={interval!r} is not a CLOB interval: use one of "
                f"{', '.join(INTERVALS)}"
            )
        order = env_text(env, "POLYMARKET_ORDER", d.order or NO_ORDER)
        return cls(
            gamma_url=env_base_url(env, "POLYMARKET_GAMMA_URL", d.gamma_url),
            clob_url=env_base_url(env, "POLYMARKET_CLOB_URL", d.clob_url),
            topic=env_text(env, "KAFKA_TOPIC", d.topic),
            http=HttpSettings.from_env(env, "POLYMARKET_"),
            max_markets=env_int(
                env, "POLYMARKET_MAX_MARKETS", d.max_markets, minimum=1, maximum=1000
            ),
            page_size=env_int(env, "POLYMARKET_PAGE_SIZE", d.page_size, minimum=1, maximum=500),
            order=None if order.lower() == NO_ORDER else order,
            history_interval=interval,
            wait_delivered=env_bool(env, WAIT_DELIVERED_VAR, False),
        )


# -- decoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    token_id: str
    name: str
    price: float | None  # Gamma's current price; None when the market gives none


@dataclass(frozen=True)
class Market:
    market_id: str
    question: str
    outcomes: tuple[Outcome, ...]


def _json_list(raw: Mapping[str, Any], name: str) -> list[Any]:
    """Gamma sends these lists as JSON-encoded strings (``"[\\"Yes\\", \\"No\\"]"``)."""
    value = raw.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise MarketFormatError(f"{name} is not a JSON list: {value[:80]!r}") from exc
    if not isinstance(value, list):
        raise MarketFormatError(f"{name} is a {type(value).__name__}, not a list")
    return value


# Unix seconds datetime can show (year 9999): a point past it cannot become a ``ts``.
MAX_TS = 253_402_300_799


def _price(value: Any) -> float:
    if isinstance(value, bool):  # float(True) is 1.0: JSON true is not a price
        raise MarketFormatError(f"price {value!r} is not a number")
    try:
        price = float(value)
    except (TypeError, ValueError) as exc:
        raise MarketFormatError(f"price {value!r} is not a number") from exc
    if not math.isfinite(price):
        raise MarketFormatError(f"price {value!r} is not finite")
    return price


def decode_market(raw: Any) -> Market:
    if not isinstance(raw, Mapping):
        raise MarketFormatError(f"a market must be a JSON object, got {type(raw).__name__}")
    market_id = raw.get("id")
    if market_id in (None, ""):
        raise MarketFormatError("the market has no id")
    names = _json_list(raw, "outcomes")
    tokens = _json_list(raw, "clobTokenIds")
    prices = _json_list(raw, "outcomePrices")
    if not tokens:
        raise MarketFormatError("no clobTokenIds: the market is not traded on the CLOB")
    if len(names) != len(tokens) or (prices and len(prices) != len(tokens)):
        raise MarketFormatError(
            f"{len(names)} outcomes, {len(tokens)} clobTokenIds and {len(prices)} "
            "outcomePrices do not pair up"
        )
    return Market(
        market_id=str(market_id),
        question=str(raw.get("question") or ""),
        outcomes=tuple(
            Outcome(str(token), str(name), _price(prices[i]) if prices else None)
            for i, (name, token) in enumerate(zip(names, tokens, strict=True))
        ),
    )


@dataclass(frozen=True)
class History:
    points: list[tuple[int, float]]  # (t, p), oldest first
    skipped: list[str]  # why each point that could not be read was left out


def decode_history(body: Any) -> History:
    """``{"history": [{"t": unix s, "p": price}]}`` as (t, p) pairs, oldest first; a point
    without a whole t in range and a numeric p is skipped (and said why), not fatal."""
    history = body.get("history") if isinstance(body, Mapping) else None
    if not isinstance(history, list):
        raise ValueError("no history list in the body")
    points = {}
    skipped = []
    for point in history:
        try:
            t = _point_time(point)
            points[t] = _price(point["p"])
        except (KeyError, TypeError, MarketFormatError) as exc:
            skipped.append(f"history point {str(point)[:80]}: {exc}")
    return History(sorted(points.items()), skipped)


def _point_time(point: Any) -> int:
    if not isinstance(point, Mapping):
        raise MarketFormatError("not an object")
    t = point["t"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= MAX_TS:
        raise MarketFormatError(f"t {t!r} is not unix seconds from 0 to {MAX_TS}")
    return int(t)


# -- fetching ---------------------------------------------------------------------------


@dataclass
class MarketListing:
    markets: list[Market] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0


def fetch_markets(
    get: GetJson, *, gamma_url: str, max_markets: int, page_size: int, order: str | None,
    deadline: Deadline = NO_DEADLINE,
) -> MarketListing:
    """Open markets, page by page (limit/offset) until a short page or ``max_markets``."""
    url = f"{gamma_url}/markets"
    listing = MarketListing()
    taken = 0
    while taken < max_markets:
        limit = min(page_size, max_markets - taken)
        params: dict[str, str | int] = {
            "active": "true", "closed": "false", "limit": limit, "offset": taken,
        }
        if order:
            params.update(order=order, ascending="false")
        try:
            page = get(url, params, deadline)
        except FetchFailed as exc:
            listing.errors.append({**exc.entry, "offset": taken})
            break
        if not isinstance(page, list):
            listing.errors.append(error_entry(
                url, "malformed", f"expected a JSON list of markets, got {type(page).__name__}",
                offset=taken,
            ))
            break
        listing.pages += 1
        for raw in page[:limit]:
            try:
                listing.markets.append(decode_market(raw))
            except MarketFormatError as exc:
                market_id = raw.get("id") if isinstance(raw, Mapping) else None
                listing.errors.append(
                    error_entry(url, "bad_market", str(exc), market_id=market_id)
                )
        taken += len(page[:limit])
        if len(page) < limit:
            break
    return listing


def fetch_history(
    get: GetJson, *, clob_url: str, token_id: str, interval: str,
    deadline: Deadline = NO_DEADLINE,
) -> History:
    url = f"{clob_url}/prices-history"
    body = get(url, {"market": token_id, "interval": interval, "fidelity": HOURLY_FIDELITY_MIN},
               deadline)
    try:
        return decode_history(body)
    except ValueError as exc:
        raise FetchFailed(error_entry(url, "malformed", str(exc), token_id=token_id)) from exc


def hour_start(epoch_s: float) -> int:
    return int(epoch_s // 3600 * 3600)


# -- one run ----------------------------------------------------------------------------


class PolymarketProducer:
    """Reads markets and hourly prices; remembers each token's last point sent."""

    def __init__(
        self,
        config: PolymarketConfig,
        *,
        get: GetJson | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.get = get or json_getter(retrying_session(config.http), config.http)
        self.last_sent: RecentMap[str, int] = RecentMap(config.token_capacity)
        self._clock = clock

    def poll(self, *, log: JsonLog, deadline: Deadline = NO_DEADLINE) -> Batch:
        cfg = self.config
        listing = fetch_markets(
            self.get,
            gamma_url=cfg.gamma_url,
            max_markets=cfg.max_markets,
            page_size=cfg.page_size,
            order=cfg.order,
            deadline=deadline,
        )
        log.info("markets.listed", markets=len(listing.markets), pages=listing.pages,
                 errors=len(listing.errors))
        batch = Batch(records=[], errors=listing.errors)
        points_sent: list[tuple[str, int]] = []  # (token, t) of each record, in order
        pending = [(market, outcome) for market in listing.markets for outcome in market.outcomes]
        for index, (market, outcome) in enumerate(pending):
            if deadline.passed():
                batch.errors.append(error_entry(
                    cfg.clob_url, "deadline",
                    f"{len(pending) - index} tokens not fetched: the invocation is close to "
                    "its timeout",
                ))
                break
            points, source = self._points(outcome, batch=batch, log=log, deadline=deadline)
            batch.fetched += len(points)
            last = self.last_sent.get(outcome.token_id)
            for t, price in points:
                if last is not None and t <= last:
                    batch.skipped_duplicates += 1
                    continue
                batch.records.append({
                    "topic": cfg.topic,
                    "key": market.market_id,
                    "value": {
                        "market_id": market.market_id,
                        "token_id": outcome.token_id,
                        "outcome": outcome.name,
                        "question": market.question,
                        "price": price,
                        "ts": iso_utc(t),
                        "source": source,
                    },
                })
                points_sent.append((outcome.token_id, t))

        def commit(accepted: Sequence[bool] | None = None, /) -> None:
            # A token's points go oldest first: remember the newest one before its first
            # point that was not handed over, so that point is sent again next run.
            oks = [True] * len(points_sent) if accepted is None else accepted
            newest: dict[str, int] = {}
            stopped: set[str] = set()
            for (token_id, t), ok in zip(points_sent, oks, strict=True):
                if token_id in stopped:
                    continue
                if ok:
                    newest[token_id] = t
                else:
                    stopped.add(token_id)
            for token_id, t in newest.items():
                self.last_sent.put(token_id, t)

        batch.commit = commit
        return batch

    def _points(
        self, outcome: Outcome, *, batch: Batch, log: JsonLog, deadline: Deadline
    ) -> tuple[list[tuple[int, float]], str]:
        try:
            history = fetch_history(
                self.get,
                clob_url=self.config.clob_url,
                token_id=outcome.token_id,
                interval=self.config.history_interval,
                deadline=deadline,
            )
        except FetchFailed as exc:
            entry = {**exc.entry, "token_id": outcome.token_id}
            batch.errors.append(entry)
            log.warning("history.failed", **entry)
            return [], SOURCE_HISTORY
        points = history.points
        if history.skipped:
            entry = error_entry(f"{self.config.clob_url}/prices-history", "bad_point",
                                history.skipped[0], token_id=outcome.token_id,
                                points=len(history.skipped))
            batch.errors.append(entry)
            log.warning("history.points_skipped", **entry)
        if points or outcome.price is None:
            return points, SOURCE_HISTORY
        return [(hour_start(self._clock()), outcome.price)], SOURCE_GAMMA
