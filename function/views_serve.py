"""Serving: prices of markets and feed counts for an hour, a day or a daily series, batch
and speed merged.

An hour with a batch view that is not dirty (``views_state``) is answered from the view;
any other hour from the speed layer (``speed (batch view pending)`` once it could have
closed: the archive is behind, or late records wait for a recomputation). A day with a
clean day view is answered from it; otherwise hour by hour the same way (a day is the sum
of its hours, so the merge is exact). A series is one day per row from ``--from`` to
``--to`` (default: today): closed days from the batch layer, today from the speed layer.

    python -m views_serve --market 253591 --hour 2026-11-28T10
    python -m views_serve --market 253591 --market 253592 --from 2026-11-20 [--json]

``views_serve.handler`` takes ``{"market": M}`` or ``{"markets": [...]}`` with ``"hour"``,
``"day"``, or ``"from"`` (and optionally ``"to"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from views_batch import BatchLayer, layer_from_env
from views_model import (
    PeriodViews,
    TokenInfo,
    ViewsConfig,
    day_of,
    hour_end,
    hours_of_day,
    parse_day,
    parse_hour,
    period_closed,
)
from views_speed import aggregate_from_item

MAX_SERIES_DAYS = 366


def _only(view: PeriodViews, markets: Iterable[str]) -> PeriodViews:
    wanted = set(markets)
    return PeriodViews({k: v for k, v in view.prices.items() if k[0] in wanted},
                       dict(view.feeds))


@dataclass
class Server:
    config: ViewsConfig
    dynamodb: Any
    batch: BatchLayer
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    def _query(self, pk: str, prefix: str) -> Iterable[dict[str, Any]]:
        paginator = self.dynamodb.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.batch.state.table, ConsistentRead=True,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
            ExpressionAttributeValues={":pk": {"S": pk}, ":sk": {"S": prefix}},
        ):
            yield from page.get("Items", [])

    def _speed(self, hour: str, markets: Sequence[str]) -> PeriodViews:
        view = PeriodViews.empty()
        for market in markets:
            for item in self._query(f"market#{market}", f"hour#{hour}#"):
                token = item["token_id"]["S"]
                info = TokenInfo(market, token, item.get("outcome", {}).get("S", ""),
                                 item.get("question", {}).get("S", ""))
                view.prices[(market, token)] = (info, aggregate_from_item(item)[0])
        for item in self._query("feeds", f"hour#{hour}#"):
            view.feeds[item["sk"]["S"].split("#", 2)[2]] = int(item["count"]["N"])
        return view

    def hour(self, hour: str, markets: Sequence[str], dirty: set[str]
             ) -> tuple[PeriodViews, str]:
        if hour not in dirty:
            found = self.batch.hour_view(hour)
            if found is not None:
                return _only(found, markets), "batch"
        view = self._speed(hour, markets)
        if period_closed(hour_end(hour), self.clock(), self.config.lateness_hours):
            return view, "speed (batch view pending)"
        return view, "speed"

    def day(self, day: str, markets: Sequence[str], dirty: set[str]
            ) -> tuple[PeriodViews, str]:
        hours = hours_of_day(day)
        if dirty.isdisjoint(hours):
            found = self.batch.day_view(day)
            if found is not None:
                return _only(found, markets), "batch"
        total, sources = PeriodViews.empty(), set()
        now = self.clock()
        for hour in hours:
            if parse_hour(hour) > now:
                break
            view, source = self.hour(hour, markets, dirty)
            total = total.merge(view)
            sources.add(source.split(" ")[0])
        return total, "+".join(sorted(sources)) or "speed"

    def period(self, markets: Sequence[str], *, hour: str | None = None,
               day: str | None = None, dirty: set[str] | None = None) -> dict[str, Any]:
        if (hour is None) == (day is None):
            raise ValueError("ask for exactly one of an hour (YYYY-MM-DDTHH), a day "
                             "(YYYY-MM-DD) or a range (from, to)")
        dirty = set(self.batch.state.dirty()) if dirty is None else dirty
        if hour is not None:
            hour = f"{parse_hour(hour):%Y-%m-%dT%H}"
            view, source = self.hour(hour, markets, dirty)
        else:
            day = day_of(parse_day(str(day)))
            view, source = self.day(day, markets, dirty)
        return {"kind": "hour" if hour else "day", "period": hour or day, "source": source,
                "markets": [_market(market, view) for market in markets],
                "feeds": dict(sorted(view.feeds.items()))}

    def series(self, markets: Sequence[str], start: str, end: str | None = None
               ) -> dict[str, Any]:
        first = parse_day(start)
        last = parse_day(end) if end else self.clock().replace(
            hour=0, minute=0, second=0, microsecond=0)
        if last < first:
            raise ValueError(f"from {start} is after to {end}")
        if (last - first).days >= MAX_SERIES_DAYS:
            raise ValueError(f"ask for at most {MAX_SERIES_DAYS} days per call")
        dirty = set(self.batch.state.dirty())
        days = [day_of(first + timedelta(days=n)) for n in range((last - first).days + 1)]
        return {"kind": "series", "from": days[0], "to": days[-1],
                "days": [self.period(markets, day=day, dirty=dirty) for day in days]}

    def answer(self, market: str, *, hour: str | None = None,
               day: str | None = None) -> dict[str, Any]:
        """One market, one period, flat: what the single-market question expects."""
        period = self.period([market], hour=hour, day=day)
        entry = period["markets"][0]
        return {"market": market, "period": period["period"], "kind": period["kind"],
                "source": period["source"], "question": entry["question"],
                "outcomes": entry["outcomes"], "feeds": period["feeds"]}


def _market(market: str, view: PeriodViews) -> dict[str, Any]:
    outcomes, question = [], ""
    for (m, token), (info, agg) in sorted(view.prices.items()):
        if m != market:
            continue
        question = question or info.question
        row = {"token_id": token, "outcome": info.outcome, **agg.to_json()}
        row.pop("last_id")
        outcomes.append(row)
    return {"market": market, "question": question, "outcomes": outcomes}


def server(env: Mapping[str, str] | None = None, *, table: str | None = None,
           bucket: str | None = None) -> Server:
    layer = layer_from_env(env, bucket=bucket, table=table)
    return Server(layer.config, boto3.client("dynamodb"), layer)


def respond(serve: Server, event: Mapping[str, Any]) -> dict[str, Any]:
    markets = event.get("markets")
    if markets is None:
        markets = [event["market"]] if event.get("market") else []
    if not isinstance(markets, list) or not all(isinstance(m, str) and m for m in markets):
        raise ValueError("markets must be a list of market ids")
    if event.get("from"):
        return serve.series(markets, str(event["from"]), event.get("to"))
    if "market" in event and "markets" not in event:
        return serve.answer(str(event["market"]), hour=event.get("hour"), day=event.get("day"))
    return serve.period(markets, hour=event.get("hour"), day=event.get("day"))


def handler(event: Any, context: Any) -> dict[str, Any]:
    try:
        return respond(server(), event if isinstance(event, Mapping) else {})
    except ValueError as exc:
        return {"error": str(exc)}


def format_table(answer: Mapping[str, Any]) -> str:
    """A small table: one row per period, market and outcome; feed counts below."""
    periods = answer["days"] if answer.get("kind") == "series" else (
        [answer] if "markets" in answer else [{**answer, "markets": [answer]}])
    header = ("period", "source", "market", "outcome", "average", "n", "min", "max", "last")
    rows: list[tuple[str, ...]] = []
    feeds: list[str] = []
    for period in periods:
        for market in period["markets"]:
            for o in market["outcomes"] or [{"outcome": "-", "average": None, "count": 0,
                                             "min": None, "max": None, "last": None}]:
                rows.append((period["period"], period["source"], market["market"],
                             o["outcome"] or o.get("token_id", "")[:12],
                             *(str(o[k] if o[k] is not None else "-")
                               for k in ("average", "count", "min", "max", "last"))))
        if period.get("feeds"):
            feeds.append(f"{period['period']} feeds: " + ", ".join(
                f"{source} {count}" for source, count in period["feeds"].items()))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines + feeds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", action="append", required=True,
                        help="a market id (repeat for several)")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--hour", help="YYYY-MM-DDTHH (UTC)")
    when.add_argument("--day", help="YYYY-MM-DD (UTC)")
    when.add_argument("--from", dest="start", help="first day of a daily series (YYYY-MM-DD)")
    parser.add_argument("--to", dest="end", help="last day of the series (default: today)")
    parser.add_argument("--table", help="DynamoDB table (default VIEWS_TABLE)")
    parser.add_argument("--bucket", help="S3 bucket (default VIEWS_BUCKET)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = parser.parse_args(argv)
    event: dict[str, Any] = {"markets": args.market, "hour": args.hour, "day": args.day,
                             "from": args.start, "to": args.end}
    try:
        answer = respond(server(table=args.table, bucket=args.bucket), event)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=1) if args.json else format_table(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
