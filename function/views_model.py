"""What both layers compute, as pure functions: decoding, periods, aggregates, dedupe.

The speed layer (DynamoDB) and the batch layer (S3) share this module so a closed
period gives the same numbers in both:

* **Identity.** A price point is ``(token_id, ts)`` and a feed item ``(source, guid)``
  (the producers' natural keys: a cold-start resend carries a new ``x-relay-id`` but the
  same natural key, and a record the relay produced twice carries the same
  ``x-relay-id`` and the same natural key). Of several records with one identity the one
  with the lowest ``(partition, offset)`` counts: the speed layer reads a partition in
  offset order and stops at its first failure, so it sees that one first.
* **Exact sums.** Prices are decimals (DynamoDB numbers are decimals too), so a sum does
  not depend on the order records arrived in.
* **last** is the price with the greatest ``ts``, ties broken by the greater identity.
* A record that fails to decode is *poison*: neither layer counts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from views_event import KafkaRecord

PRICE_TOPIC = "polymarket.price_hourly"
RSS_TOPIC = "rss.events"
HOUR_FORMAT = "%Y-%m-%dT%H"
DAY_FORMAT = "%Y-%m-%d"
AVERAGE_PLACES = Decimal("1e-12")
PRICE_LIMIT = Decimal("1e12")


class PoisonRecord(ValueError):
    """A record no retry can fix: undecodable value or missing fields."""


class ConfigError(ValueError):
    """A views setting is missing or wrong; the message names the variable."""


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("true", "false"):
        raise ConfigError(f"{name}={text!r}: use true or false")
    return text == "true"


@dataclass(frozen=True)
class ViewsConfig:
    table: str | None = None
    bucket: str | None = None
    price_topic: str = PRICE_TOPIC
    rss_topic: str = RSS_TOPIC
    lateness_hours: int = 6
    dedupe_ttl_days: int = 14  # 0: seen items and claims never expire
    speed_ttl_days: int = 7  # closed hours' speed aggregates expire this long after closing
    sweep_hours: int = 48  # the close looks this far back for closed hours without a view
    partial_batch_response: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ViewsConfig:
        def hours(name: str, default: int, maximum: int) -> int:
            text = env.get(name, "").strip()
            if not text:
                return default
            if not text.isdigit() or int(text) > maximum:
                raise ConfigError(f"{name}={text!r}: use a whole number from 0 to {maximum}")
            return int(text)

        return cls(
            table=env.get("VIEWS_TABLE") or None,
            bucket=env.get("VIEWS_BUCKET") or None,
            price_topic=env.get("VIEWS_PRICE_TOPIC") or PRICE_TOPIC,
            rss_topic=env.get("VIEWS_RSS_TOPIC") or RSS_TOPIC,
            lateness_hours=hours("VIEWS_LATENESS_HOURS", 6, 24 * 7),
            dedupe_ttl_days=hours("VIEWS_DEDUPE_TTL_DAYS", 14, 3650),
            speed_ttl_days=hours("VIEWS_SPEED_TTL_DAYS", 7, 3650),
            sweep_hours=hours("VIEWS_SWEEP_HOURS", 48, 24 * 366),
            partial_batch_response=_flag(env, "VIEWS_PARTIAL_BATCH_RESPONSE", True),
        )

    def dedupe_expiry(self, now_s: float) -> int | None:
        """When a seen item or claim made now may go: it must outlive the topics'
        retention, or a replay from the start would count its record again."""
        return None if self.dedupe_ttl_days == 0 else int(now_s) + self.dedupe_ttl_days * 86400

    def require(self, name: str) -> str:
        value = {"VIEWS_TABLE": self.table, "VIEWS_BUCKET": self.bucket}[name]
        if not value:
            raise ConfigError(f"{name} is not set: set it in the function's environment")
        return value


# -- time and periods --------------------------------------------------------------------


def parse_ts(text: Any) -> datetime:
    if not isinstance(text, str) or not text:
        raise PoisonRecord(f"ts {text!r} is not an ISO-8601 time")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise PoisonRecord(f"ts {text!r} is not an ISO-8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_of(moment: datetime) -> str:
    return moment.strftime(HOUR_FORMAT)


def day_of(moment: datetime) -> str:
    return moment.strftime(DAY_FORMAT)


def parse_hour(text: str) -> datetime:
    try:
        return datetime.strptime(text, HOUR_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise ValueError(f"hour {text!r} is not YYYY-MM-DDTHH (e.g. 2026-11-28T10)") from exc


def parse_day(text: str) -> datetime:
    try:
        return datetime.strptime(text, DAY_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise ValueError(f"day {text!r} is not YYYY-MM-DD (e.g. 2026-11-28)") from exc


def period_closed(end: datetime, now: datetime, lateness_hours: int) -> bool:
    """A period may close once its end plus the allowed lateness has passed."""
    return now >= end + timedelta(hours=lateness_hours)


def hour_end(hour: str) -> datetime:
    return parse_hour(hour) + timedelta(hours=1)


def hours_of_day(day: str) -> list[str]:
    start = parse_day(day)
    return [hour_of(start + timedelta(hours=step)) for step in range(24)]


# -- decoding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PricePoint:
    market_id: str
    token_id: str
    outcome: str
    question: str
    price: Decimal
    ts: str  # normalised UTC, second precision: orders lexicographically
    hour: str
    day: str
    order: tuple[int, int]  # (partition, offset)

    @property
    def identity(self) -> str:
        return f"price#{self.token_id}#{self.ts}"


@dataclass(frozen=True)
class FeedItem:
    source: str
    guid: str
    hour: str
    order: tuple[int, int]
    counted: bool = True  # False: an earlier record of the same item counts (a resend)

    @property
    def identity(self) -> str:
        return f"rss#{self.source}#{self.guid}"


def _json_object(record: KafkaRecord) -> dict[str, Any]:
    if record.value is None:
        raise PoisonRecord("the record has no value")
    try:
        value = json.loads(record.value.decode("utf-8"), parse_float=Decimal)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PoisonRecord(f"the value is not UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise PoisonRecord(f"the value is a JSON {type(value).__name__}, not an object")
    return value


def _text(value: Mapping[str, Any], name: str) -> str:
    field = value.get(name)
    if isinstance(field, (int, Decimal)) and not isinstance(field, bool):
        field = str(field)
    if not isinstance(field, str) or not field:
        raise PoisonRecord(f"field {name!r} is missing or empty")
    return field


def decode_price(record: KafkaRecord) -> PricePoint:
    value = _json_object(record)
    raw = value.get("price")
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
        raise PoisonRecord(f"price {raw!r} is not a number")
    try:
        price = Decimal(raw)
    except InvalidOperation as exc:
        raise PoisonRecord(f"price {raw!r} is not a number") from exc
    if not price.is_finite() or abs(price) >= PRICE_LIMIT:
        raise PoisonRecord(f"price {raw!r} is not finite or not below {PRICE_LIMIT}")
    # 12 places keep every sum exact in DynamoDB's 38 digits; float noise beyond them
    # (0.30000000000000004) is rounded the same way in both layers.
    price = price.quantize(AVERAGE_PLACES)
    moment = parse_ts(value.get("ts"))
    return PricePoint(
        market_id=_text(value, "market_id"),
        token_id=_text(value, "token_id"),
        outcome=str(value.get("outcome") or ""),
        question=str(value.get("question") or ""),
        price=price,
        ts=iso(moment),
        hour=hour_of(moment),
        day=day_of(moment),
        order=(record.partition, record.offset),
    )


def decode_feed_item(record: KafkaRecord) -> FeedItem:
    """A feed item counts in the hour the relay's producer fetched it (``fetched_at``)."""
    value = _json_object(record)
    guid = value.get("guid") or (record.key.decode("utf-8", "replace") if record.key else None)
    if not guid:
        raise PoisonRecord("field 'guid' is missing and the record has no key")
    return FeedItem(
        source=_text(value, "source"),
        guid=str(guid),
        hour=hour_of(parse_ts(value.get("fetched_at"))),
        order=(record.partition, record.offset),
    )


# -- archive rows: one flat, typed JSON object per record ------------------------------------


def price_row(point: PricePoint, record: KafkaRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset,
            "timestamp_ms": record.timestamp_ms, "relay_id": record.identity,
            "market_id": point.market_id, "token_id": point.token_id,
            "outcome": point.outcome, "question": point.question,
            "price": format(point.price, "f"), "ts": point.ts}


def feed_row(item: FeedItem, record: KafkaRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset,
            "timestamp_ms": record.timestamp_ms, "relay_id": record.identity,
            "source": item.source, "guid": item.guid, "fetched_hour": item.hour,
            "counted": item.counted}


def _row_int(row: Mapping[str, Any], name: str) -> int:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonRecord(f"archive row field {name!r} is {value!r}, not an integer")
    return value


def point_from_row(row: Any) -> PricePoint:
    if not isinstance(row, Mapping):
        raise PoisonRecord("archive row is not an object")
    try:
        price = Decimal(str(row["price"]))
    except (KeyError, InvalidOperation) as exc:
        raise PoisonRecord(f"archive row price {row.get('price')!r} is not a number") from exc
    moment = parse_ts(row.get("ts"))
    return PricePoint(market_id=_text(row, "market_id"), token_id=_text(row, "token_id"),
                      outcome=str(row.get("outcome") or ""),
                      question=str(row.get("question") or ""), price=price, ts=iso(moment),
                      hour=hour_of(moment), day=day_of(moment),
                      order=(_row_int(row, "partition"), _row_int(row, "offset")))


def item_from_row(row: Any) -> FeedItem:
    if not isinstance(row, Mapping):
        raise PoisonRecord("archive row is not an object")
    counted = row.get("counted")
    if not isinstance(counted, bool):
        raise PoisonRecord(f"archive row 'counted' is {counted!r}, not true or false")
    return FeedItem(source=_text(row, "source"), guid=_text(row, "guid"),
                    hour=hour_of(parse_hour(_text(row, "fetched_hour"))),
                    order=(_row_int(row, "partition"), _row_int(row, "offset")),
                    counted=counted)


def num(value: Decimal | None) -> str | None:
    """A decimal as plain canonical text: 0.62, 100 (as DynamoDB gives numbers back)."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


# -- aggregates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """count, sum, min, max and last of a token's prices in one period (empty: count 0)."""

    count: int = 0
    total: Decimal = Decimal(0)
    low: Decimal | None = None
    high: Decimal | None = None
    last_price: Decimal | None = None
    last_ts: str = ""
    last_id: str = ""

    def add(self, point: PricePoint) -> Aggregate:
        return self.merge(Aggregate(1, point.price, point.price, point.price, point.price,
                                    point.ts, point.identity))

    def merge(self, other: Aggregate) -> Aggregate:
        """Associative and commutative: periods and batches combine in any order."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        later = other if (other.last_ts, other.last_id) > (self.last_ts, self.last_id) else self
        return Aggregate(
            count=self.count + other.count,
            total=self.total + other.total,
            low=min(self.low, other.low),  # type: ignore[type-var]
            high=max(self.high, other.high),  # type: ignore[type-var]
            last_price=later.last_price,
            last_ts=later.last_ts,
            last_id=later.last_id,
        )

    @property
    def average(self) -> Decimal | None:
        if self.count == 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 38  # DynamoDB's precision
            return (self.total / self.count).quantize(AVERAGE_PLACES)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": num(self.total), "min": num(self.low),
                "max": num(self.high), "last": num(self.last_price), "last_ts": self.last_ts,
                "last_id": self.last_id, "average": num(self.average)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Aggregate:
        def dec(value: Any) -> Decimal | None:
            return None if value is None else Decimal(str(value))

        return cls(count=int(data["count"]), total=Decimal(str(data["sum"])),
                   low=dec(data.get("min")), high=dec(data.get("max")),
                   last_price=dec(data.get("last")), last_ts=str(data.get("last_ts") or ""),
                   last_id=str(data.get("last_id") or ""))


@dataclass(frozen=True)
class TokenInfo:
    market_id: str
    token_id: str
    outcome: str
    question: str


PriceViews = dict[tuple[str, str], tuple[TokenInfo, Aggregate]]  # (market, token) -> ...


@dataclass
class PeriodViews:
    """What one period's view holds: per-token price aggregates and per-feed item counts."""

    prices: PriceViews
    feeds: dict[str, int]

    @classmethod
    def empty(cls) -> PeriodViews:
        return cls({}, {})

    def merge(self, other: PeriodViews) -> PeriodViews:
        prices = dict(self.prices)
        for key, (info, agg) in other.prices.items():
            mine = prices.get(key)
            prices[key] = (info, agg) if mine is None else (mine[0], mine[1].merge(agg))
        feeds = dict(self.feeds)
        for source, count in other.feeds.items():
            feeds[source] = feeds.get(source, 0) + count
        return PeriodViews(prices, feeds)

    def price_rows(self, period: str) -> list[dict[str, Any]]:
        """One row per period x market x token (what the batch views store)."""
        return [{"period": period, "market_id": market, "token_id": token,
                 "outcome": info.outcome, "question": info.question, **agg.to_json()}
                for (market, token), (info, agg) in sorted(self.prices.items())]

    def feed_rows(self, period: str) -> list[dict[str, Any]]:
        return [{"period": period, "source": source, "count": count}
                for source, count in sorted(self.feeds.items())]

    @classmethod
    def from_rows(cls, prices: Iterable[Mapping[str, Any]],
                  feeds: Iterable[Mapping[str, Any]]) -> PeriodViews:
        view = cls.empty()
        for row in prices:
            market, token = str(row["market_id"]), str(row["token_id"])
            info = TokenInfo(market, token, str(row.get("outcome") or ""),
                             str(row.get("question") or ""))
            view.prices[(market, token)] = (info, Aggregate.from_json(row))
        for row in feeds:
            view.feeds[str(row["source"])] = int(row["count"])
        return view


@dataclass(frozen=True)
class Decoded:
    prices: list[PricePoint]
    feeds: list[FeedItem]
    poison: list[tuple[KafkaRecord, str]]


def decode_all(records: Iterable[KafkaRecord], config: ViewsConfig) -> Decoded:
    prices: list[PricePoint] = []
    feeds: list[FeedItem] = []
    poison: list[tuple[KafkaRecord, str]] = []
    for record in records:
        try:
            if record.topic == config.price_topic:
                prices.append(decode_price(record))
            elif record.topic == config.rss_topic:
                feeds.append(decode_feed_item(record))
        except PoisonRecord as exc:
            poison.append((record, str(exc)))
    return Decoded(prices, feeds, poison)


def event_time(record: KafkaRecord, config: ViewsConfig) -> datetime:
    """When a record happened: a price's ``ts``, a feed item's ``fetched_at``; the Kafka
    timestamp for other topics and for records that do not decode."""
    try:
        if record.topic == config.price_topic:
            return parse_ts(_json_object(record).get("ts"))
        if record.topic == config.rss_topic:
            return parse_ts(_json_object(record).get("fetched_at"))
    except PoisonRecord:
        pass
    return datetime.fromtimestamp(record.timestamp_ms / 1000, tz=timezone.utc)


def first_by_identity(items: Iterable[Any]) -> list[Any]:
    """One item per identity: the one with the lowest (partition, offset)."""
    chosen: dict[str, Any] = {}
    for item in items:
        kept = chosen.get(item.identity)
        if kept is None or item.order < kept.order:
            chosen[item.identity] = item
    return list(chosen.values())


def compute_views(decoded: Decoded, *, period: str) -> dict[str, PeriodViews]:
    """Views per period key (``hour`` or ``day``) from deduplicated points and items."""
    views: dict[str, PeriodViews] = {}
    for point in sorted(first_by_identity(decoded.prices), key=lambda p: p.order):
        key = point.hour if period == "hour" else point.day
        view = views.setdefault(key, PeriodViews.empty())
        ident = (point.market_id, point.token_id)
        info, agg = view.prices.get(ident) or (
            TokenInfo(point.market_id, point.token_id, point.outcome, point.question),
            Aggregate())
        view.prices[ident] = (info, agg.add(point))
    counted = [item for item in decoded.feeds if item.counted]
    for item in sorted(first_by_identity(counted), key=lambda i: i.order):
        key = item.hour if period == "hour" else item.hour[:10]
        view = views.setdefault(key, PeriodViews.empty())
        view.feeds[item.source] = view.feeds.get(item.source, 0) + 1
    return views
