"""The Lambda-Architecture views, locally: what ``./build.sh demo`` prints at its end.

Given a broker with ``polymarket.price_hourly`` and ``rss.events`` on it and the built
views zip (``views-functions.zip``, which carries DuckDB: this process never imports it):
starts moto (DynamoDB + S3) in server mode, creates the views table and bucket, and runs
each views function in the local Lambda sandbox —
``views_speed.handler`` and ``views_batch.archive_handler`` fed by the local event source
poller (batches of up to 100 records, a 0.5 s window), ``views_batch.close_handler``
recomputing each day the data covers (``{"from": day, "to": day}``), then
``views_serve.handler`` answering a few markets.
Returns the problems found (empty when the speed and batch layers agree).

    python -m devtools.views_demo --bootstrap 127.0.0.1:9092 [--functions dist/views-functions.zip]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from devtools.esm_poller import EsmPoller, Invoke, OnFailure, PollerStats
from devtools.moto_server import MotoServer
from devtools.sandbox import Sandbox
from layer_build.deploy_views import create_table

ROOT = Path(__file__).resolve().parent.parent
TABLE, BUCKET = "kafka-relay-views", "kafka-relay-views-local"
TOPICS = ("polymarket.price_hourly", "rss.events")


def sandbox_invoker(sandbox: Sandbox) -> Invoke:
    def invoke(event: dict[str, Any]) -> tuple[bool, Any]:
        result = sandbox.invoke(event)
        return result.status == "success", result.payload

    return invoke


def s3_destination(s3: Any, mapping: str) -> OnFailure:
    """Like the mapping's S3 on-failure destination: one object per failed batch."""
    def put(event: dict[str, Any], reason: str) -> None:
        key = f"aws/lambda/{mapping}/{time.strftime('%Y/%m/%d')}/{time.time_ns()}.json"
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(
            {"requestContext": {"condition": "RetryAttemptsExhausted", "reason": reason},
             "payload": event}).encode())

    return put


@contextmanager
def function(functions: Path, handler: str, env: dict[str, str], name: str
             ) -> Iterator[Sandbox]:
    with Sandbox(function=functions, handler=handler, env=env, function_name=name,
                 timeout_s=60.0) as sandbox:
        yield sandbox


def consume(bootstrap: str, functions: Path, *, env: dict[str, str], s3: Any, handler: str,
            name: str, topics: tuple[str, ...]) -> PollerStats:
    with function(functions, handler, env, name) as sandbox:
        poller = EsmPoller(bootstrap, topics, invoke=sandbox_invoker(sandbox),
                           on_failure=s3_destination(s3, name))
        # The producers are done: the end of each partition is the end (a short idle suffices).
        return poller.run_until_idle(idle_s=0.2, timeout_s=120.0)


@dataclass
class ViewsRun:
    stats: dict[str, PollerStats] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _periods(ddb: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """Hours the speed layer saw, and the busiest markets with their latest hour."""
    hours: set[str] = set()
    counts: dict[str, int] = {}
    latest: dict[str, str] = {}
    for page in ddb.get_paginator("scan").paginate(TableName=TABLE):
        for item in page["Items"]:
            pk, sk = item["pk"]["S"], item["sk"]["S"]
            if pk.startswith("market#") and sk.startswith("hour#"):
                market, hour = pk[7:], sk.split("#")[1]
                hours.add(hour)
                counts[market] = counts.get(market, 0) + int(item["count"]["N"])
                latest[market] = max(latest.get(market, ""), hour)
    markets = sorted(counts, key=lambda m: (-counts[m], m))
    return sorted(hours), [(m, latest[m]) for m in markets]


def _speed_totals(ddb: Any, market: str, hours: str) -> dict[str, tuple[int, Decimal]]:
    """Count and sum per token over the speed layer's hour items starting with ``hours``
    (one hour, or a day's prefix: a day is the sum of its hours)."""
    items = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :p AND begins_with(sk, :s)",
                      ExpressionAttributeValues={":p": {"S": f"market#{market}"},
                                                 ":s": {"S": f"hour#{hours}"}})["Items"]
    totals: dict[str, tuple[int, Decimal]] = {}
    for item in items:
        count, total = totals.get(item["token_id"]["S"], (0, Decimal(0)))
        totals[item["token_id"]["S"]] = (count + int(item["count"]["N"]),
                                         total + Decimal(item["sum"]["N"]))
    return totals


def run_views(bootstrap: str, functions: Path, moto: MotoServer, *,
              topics: tuple[str, ...] = TOPICS, markets: int = 3) -> ViewsRun:
    """Speed and archive consumers over ``topics`` (price topic first), then the batch
    views, then a few served answers checked against the speed layer."""
    run = ViewsRun()
    ddb, s3 = moto.client("dynamodb"), moto.client("s3")
    create_table(ddb, TABLE)
    s3.create_bucket(Bucket=BUCKET)
    env = {**moto.env(), "VIEWS_TABLE": TABLE, "VIEWS_BUCKET": BUCKET,
           "VIEWS_PRICE_TOPIC": topics[0], "VIEWS_RSS_TOPIC": topics[1]}
    for handler, name in (("views_speed.handler", "views-speed"),
                          ("views_batch.archive_handler", "views-archive")):
        stats = run.stats[name] = consume(bootstrap, functions, env=env, s3=s3, handler=handler,
                                          name=name, topics=topics)
        print(f"  {name}: {stats.records} records {stats.by_topic} in {stats.batches} "
              f"batches (largest {stats.largest_batch}), {stats.invocations} invocations, "
              f"{stats.retries} retries, {stats.to_destination} to the failure destination")
        if stats.records == 0:
            run.problems.append(f"{name}: the poller read no records")
    hours, busiest = _periods(ddb)
    days = sorted({hour[:10] for hour in hours})
    if not hours:
        run.problems.append("the speed layer counted no prices")
        return run
    with function(functions, "views_batch.close_handler", env, "views-close") as close:
        written: list[str] = []
        for day in days:  # a backfill of each day the data covers
            result = close.invoke({"from": day, "to": day})
            if result.status != "success":
                run.problems.append(f"views-close {day}: {result.error}")
            elif isinstance(result.payload, dict):
                written += result.payload.get("written", [])
    print(f"  views-close: {sum('_hour/' in k for k in written)} hour views, "
          f"{sum('_day/' in k for k in written)} day views written")
    with function(functions, "views_serve.handler", env, "views-serve") as serve:
        for market, hour in busiest[:markets]:
            for kind, when in (("day", hour[:10]), ("hour", hour)):
                answer = serve.invoke({"market": market, kind: when}).payload
                run.answers.append(answer)
                run.problems += _print_answer(answer, _speed_totals(
                    ddb, market, when if kind == "day" else f"{when}#"))
    return run


def show_views(bootstrap: str, functions: Path) -> list[str]:
    """What ``./build.sh demo`` calls at its end: the views over the demo's topics."""
    print("\n== Lambda-Architecture views (speed: DynamoDB, batch: S3; moto server)")
    with MotoServer() as moto:
        return run_views(bootstrap, functions, moto).problems


def _print_answer(answer: Any, speed: dict[str, tuple[int, Decimal]]) -> list[str]:
    if not isinstance(answer, dict) or "outcomes" not in answer:
        return [f"views-serve answered {answer!r}"]
    print(f"  market {answer['market']} {answer['kind']} {answer['period']} "
          f"[{answer['source']}] {answer['question'][:60]}")
    problems = []
    served = {row["token_id"] for row in answer["outcomes"]}
    if served != set(speed):
        problems.append(f"market {answer['market']} {answer['period']}: served "
                        f"{len(served)} outcomes, the speed layer has {len(speed)}")
    for row in answer["outcomes"]:
        print(f"    {row['outcome'] or row['token_id'][:12]:<8} average {row['average']:<16} "
              f"n={row['count']:<3} min {row['min']} max {row['max']} last {row['last']}")
        mine = (row["count"], Decimal(row["sum"]))
        if mine != speed.get(row["token_id"]):
            problems.append(f"market {answer['market']} {answer['period']}: batch n, sum "
                            f"{mine} but speed layer {speed.get(row['token_id'])}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--functions", type=Path, default=ROOT / "dist/views-functions.zip")
    args = parser.parse_args(argv)
    problems = show_views(args.bootstrap, args.functions)
    for problem in problems:
        print(f"VIEWS: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
