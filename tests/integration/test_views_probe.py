"""The views driven only through their deployed entry points — the speed and archive
handlers with event source mapping events, the scheduled close, the serving handler — on
moto server, through late records, a lagging archive, feed items re-sent in later hours, a
missed scheduled run and redeliveries: every served hour and day equals the exact aggregate
of what was produced."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
import views_speed
from views_batch import archive_handler, close_handler
from views_event import KafkaRecord, build_event
from views_model import ViewsConfig, compute_views, decode_all, hours_of_day
from views_serve import handler as serve_handler

from devtools.moto_server import MotoServer, use_moto
from layer_build.deploy_views import create_table
from tests.views_data import BASE, RSS_TOPIC, feed_value, record, redelivered, scenario

TABLE, BUCKET = "views-probe", "views-probe-bucket"
DAY = BASE.strftime("%Y-%m-%d")
MARKETS = ["1000", "1001", "1002"]


@pytest.fixture
def deployed(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    use_moto(moto, monkeypatch)
    create_table(moto.client("dynamodb"), TABLE)
    moto.client("s3").create_bucket(Bucket=BUCKET)
    for name, value in {"VIEWS_TABLE": TABLE, "VIEWS_BUCKET": BUCKET,
                        "VIEWS_LATENESS_HOURS": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(views_speed, "_RUNTIME", None)
    return moto


def _mapping(handler: Any, records: list[KafkaRecord], rng: random.Random) -> None:
    """Deliver as a mapping does: per partition in offset order, batches of up to 10,
    some batches delivered twice (a retry after a timeout)."""
    ordered = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    for i in range(0, len(ordered), 10):
        event = build_event(ordered[i:i + 10], source=rng.choice(["aws:kafka",
                                                                   "SelfManagedKafka"]))
        for _ in range(2 if rng.random() < 0.3 else 1):
            assert handler(event, None) == {"batchItemFailures": []}


def _scheduled(at: datetime) -> dict[str, Any]:
    return close_handler({"source": "aws.events", "detail-type": "Scheduled Event",
                          "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}, None)


def _expected(produced: list[KafkaRecord], period: str) -> dict[str, Any]:
    views = compute_views(decode_all(produced, ViewsConfig()), period=period)
    out: dict[str, Any] = {}
    for key, view in views.items():
        prices = {}
        for (market, token), (_, agg) in view.prices.items():
            row = agg.to_json()
            row.pop("last_id")
            prices[(market, token)] = row
        out[key] = (prices, view.feeds)
    return out


def _served(event: dict[str, Any]) -> tuple[dict[tuple[str, str], Any], dict[str, int], str]:
    answer = serve_handler({"markets": MARKETS, **event}, None)
    prices = {}
    for market in answer["markets"]:
        for row in market["outcomes"]:
            prices[(market["market"], row["token_id"])] = {
                k: v for k, v in row.items() if k not in ("outcome", "token_id")}
    return prices, answer["feeds"], answer["source"]


def _check_everything(produced: list[KafkaRecord]) -> set[str]:
    hours, days = _expected(produced, "hour"), _expected(produced, "day")
    sources = set()
    for hour in hours_of_day(DAY):
        prices, feeds, source = _served({"hour": hour})
        assert (prices, feeds) == hours.get(hour, ({}, {})), hour
        sources.add(source)
    prices, feeds, source = _served({"day": DAY})
    assert (prices, feeds) == days[DAY]
    return sources | {source}


def _resends(start: int) -> list[KafkaRecord]:
    """A cold-started feed producer re-sends two items two hours later (new ids)."""
    return [record(RSS_TOPIC, 0, start + n, feed_value("https://feed0.example/rss",
                                                       f"guid-{n}-0",
                                                       BASE + timedelta(hours=n + 2)),
                   relay_id=f"cold-{n}") for n in range(2)]


def _metrics(out: str) -> dict[str, list[dict[str, Any]]]:
    """The embedded-metric-format lines the handlers printed, per function."""
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    found: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "_aws" in line:
            found.setdefault(line["Function"], []).append(line)
    return found


def test_every_served_hour_and_day_is_the_exact_aggregate_of_what_was_produced(
    deployed: MotoServer, capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(26)
    produced = scenario(26, hours=6)
    rss_end = 1 + max(r.offset for r in produced if (r.topic, r.partition) == (RSS_TOPIC, 0))
    produced += _resends(rss_end)
    records = redelivered(produced, seed=4)

    _mapping(views_speed.handler, records, rng)
    # the archive consumer lags: it has read each partition only up to two thirds
    ends = {(r.topic, r.partition): r.offset for r in sorted(records, key=lambda r: r.offset)}
    archived_first = [r for r in records if r.offset < ends[(r.topic, r.partition)] * 2 // 3]
    _mapping(archive_handler, archived_first, rng)
    closes = BASE + timedelta(days=1, hours=3)
    first = _scheduled(closes)
    assert first["deferred"]  # hours it could not close yet
    assert _check_everything(produced) >= {"speed (batch view pending)"}
    metrics = _metrics(capsys.readouterr().out)
    (close_metrics,) = metrics["close"]
    assert close_metrics["DeferredHours"] == len(first["deferred"])
    assert close_metrics["ArchiveLagSeconds"] > 0
    points = decode_all(produced, ViewsConfig())
    counted = len({p.identity for p in points.prices} | {i.identity for i in points.feeds})
    # every record is for an hour long closed by the clock: all counted ones are late
    assert sum(m["RecordsAfterClose"] for m in metrics["speed"]) == counted
    assert sum(m["PoisonRecords"] for m in metrics["speed"]) >= len(points.poison)

    _mapping(archive_handler, records, rng)  # the archive catches up (and re-archives)
    # the next scheduled run is missed; the one after closes everything behind it
    _scheduled(closes + timedelta(hours=2))
    assert _check_everything(produced) == {"batch"}

    # records produced late for hour 09 (already closed), then redelivered
    late_at = BASE + timedelta(hours=1, minutes=45)
    late = [record("polymarket.price_hourly", 1, 10_000 + n, {
        "market_id": "1001", "token_id": "tok-1-Yes", "outcome": "Yes",
        "question": "Will market 1001 resolve?", "price": 0.111 * (n + 1),
        "ts": (late_at + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")},
        relay_id=f"late-{n}", produced=closes + timedelta(hours=3)) for n in range(3)]
    _mapping(views_speed.handler, late + late[:1], rng)
    produced += late
    assert _check_everything(produced) >= {"speed (batch view pending)"}
    _mapping(archive_handler, late, rng)
    _scheduled(closes + timedelta(hours=4))
    assert _check_everything(produced) == {"batch"}
    _mapping(archive_handler, late, rng)  # a redelivery after the close: recomputed, same
    capsys.readouterr()
    _scheduled(closes + timedelta(hours=5))
    (close_metrics,) = _metrics(capsys.readouterr().out)["close"]
    assert (close_metrics["DeferredHours"], close_metrics["BatchSpeedDifferences"],
            close_metrics["ArchiveLagSeconds"]) == (0, 0, 0)
    assert _check_everything(produced) == {"batch"}

    series = serve_handler({"markets": MARKETS, "from": DAY, "to": (
        BASE + timedelta(days=1)).strftime("%Y-%m-%d")}, None)
    assert [day["source"] for day in series["days"]] == ["batch", "batch+speed"]
    assert sum(row["count"] for market in series["days"][0]["markets"]
               for row in market["outcomes"]) == sum(
        row["count"] for row in _expected(produced, "day")[DAY][0].values())
