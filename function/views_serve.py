"""Serving: the average price of a market for an hour or a day, batch and speed merged.

A closed period (its end plus ``VIEWS_LATENESS_HOURS`` has passed) is answered from its
batch view on S3; an open one from the speed layer in DynamoDB. An open day merges the
batch views of its closed hours with the speed layer's aggregates of the others (the
aggregates are associative, so the merge is exact). A closed period without a batch view
yet falls back to the speed layer and says so.

    python -m views_serve --market 253591 --hour 2026-11-28T10
    python -m views_serve --market 253591 --day 2026-11-28 [--table T --bucket B]

``views_serve.handler`` answers ``{"market": "...", "hour": "..."}`` or ``"day"`` the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from views_batch import BatchLayer, day_view_key, hour_view_key
from views_model import (
    Aggregate,
    TokenInfo,
    ViewsConfig,
    hour_of,
    parse_day,
    parse_hour,
    period_closed,
)
from views_speed import aggregate_from_item

Prices = dict[str, tuple[TokenInfo, Aggregate]]  # token -> ...


@dataclass
class Server:
    config: ViewsConfig
    dynamodb: Any
    batch: BatchLayer
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    def _speed(self, market: str, hour: str | None = None, day: str | None = None) -> Prices:
        prefix = f"hour#{hour}#" if hour else f"day#{day}#"
        prices: Prices = {}
        paginator = self.dynamodb.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.config.require("VIEWS_TABLE"), ConsistentRead=True,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
            ExpressionAttributeValues={":pk": {"S": f"market#{market}"}, ":sk": {"S": prefix}},
        ):
            for item in page.get("Items", []):
                agg, _ = aggregate_from_item(item)
                token = item["token_id"]["S"]
                prices[token] = (TokenInfo(market, token, item.get("outcome", {}).get("S", ""),
                                           item.get("question", {}).get("S", "")), agg)
        return prices

    def _batch(self, key: str, market: str) -> Prices | None:
        view = self.batch.read_view(key)
        if view is None:
            return None
        return {token: entry for (m, token), entry in view.prices.items() if m == market}

    def hour(self, market: str, hour: str) -> tuple[Prices, str]:
        end = parse_hour(hour) + timedelta(hours=1)
        if period_closed(end, self.clock(), self.config.lateness_hours):
            found = self._batch(hour_view_key(hour), market)
            if found is not None:
                return found, "batch"
            return self._speed(market, hour=hour), "speed (no batch view yet)"
        return self._speed(market, hour=hour), "speed"

    def day(self, market: str, day: str) -> tuple[Prices, str]:
        start = parse_day(day)
        now = self.clock()
        if period_closed(start + timedelta(days=1), now, self.config.lateness_hours):
            found = self._batch(day_view_key(day), market)
            if found is not None:
                return found, "batch"
        merged: Prices = {}
        sources: set[str] = set()
        for step in range(24):
            prices, source = self.hour(market, hour_of(start + timedelta(hours=step)))
            sources.add(source.split(" ")[0])
            for token, (info, agg) in prices.items():
                mine = merged.get(token)
                merged[token] = (info, agg) if mine is None else (mine[0], mine[1].merge(agg))
        return merged, "+".join(sorted(sources))

    def answer(self, market: str, *, hour: str | None = None,
               day: str | None = None) -> dict[str, Any]:
        if (hour is None) == (day is None):
            raise ValueError("ask for exactly one of an hour (YYYY-MM-DDTHH) or a day "
                             "(YYYY-MM-DD)")
        prices, source = self.hour(market, hour) if hour else self.day(market, str(day))
        outcomes = []
        for token, (info, agg) in sorted(prices.items()):
            row = {"token_id": token, "outcome": info.outcome, **agg.to_json()}
            row.pop("last_id")
            outcomes.append(row)
        return {"market": market, "period": hour or day, "kind": "hour" if hour else "day",
                "source": source, "question": next(
                    (info.question for info, _ in prices.values() if info.question), ""),
                "outcomes": outcomes}


def server(env: Mapping[str, str] | None = None, *, table: str | None = None,
           bucket: str | None = None) -> Server:
    config = ViewsConfig.from_env(os.environ if env is None else env)
    config = ViewsConfig(table=table or config.table, bucket=bucket or config.bucket,
                         price_topic=config.price_topic, rss_topic=config.rss_topic,
                         lateness_hours=config.lateness_hours,
                         dedupe_ttl_days=config.dedupe_ttl_days)
    return Server(config, boto3.client("dynamodb"),
                  BatchLayer(config.require("VIEWS_BUCKET"), boto3.client("s3"), config))


def handler(event: Any, context: Any) -> dict[str, Any]:
    event = event if isinstance(event, Mapping) else {}
    try:
        return server().answer(str(event.get("market") or ""), hour=event.get("hour"),
                               day=event.get("day"))
    except ValueError as exc:
        return {"error": str(exc)}


def format_answer(answer: Mapping[str, Any]) -> str:
    lines = [f"market {answer['market']} {answer['kind']} {answer['period']} "
             f"({answer['source']}): {answer['question']}"]
    if not answer["outcomes"]:
        lines.append("  no prices")
    for row in answer["outcomes"]:
        lines.append(f"  {row['outcome'] or row['token_id'][:16]:<10} average {row['average']}"
                     f"  n={row['count']} min {row['min']} max {row['max']} last {row['last']}"
                     f" @ {row['last_ts']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", required=True)
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--hour", help="YYYY-MM-DDTHH (UTC)")
    when.add_argument("--day", help="YYYY-MM-DD (UTC)")
    parser.add_argument("--table", help="DynamoDB table (default VIEWS_TABLE)")
    parser.add_argument("--bucket", help="S3 bucket (default VIEWS_BUCKET)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = parser.parse_args(argv)
    try:
        answer = server(table=args.table, bucket=args.bucket).answer(
            args.market, hour=args.hour, day=args.day)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=1) if args.json else format_answer(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
