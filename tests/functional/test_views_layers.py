"""Speed layer (DynamoDB) and batch layer (S3) on moto server: same input, same numbers."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import views_serve
import views_speed
from views_batch import BatchLayer, close_periods, hour_view_key
from views_event import KafkaRecord, build_event, parse_event
from views_model import PeriodViews, ViewsConfig, decode_all, hour_of
from views_serve import Server
from views_speed import Quarantine, SpeedStore, aggregate_from_item, consume

from devtools.moto_server import MotoServer, use_moto
from layer_build.deploy_views import create_table
from tests.views_data import BASE, PRICE_TOPIC, price_value, record, redelivered, scenario

TABLE, BUCKET = "views", "views-bucket"
CONFIG = ViewsConfig(table=TABLE, bucket=BUCKET, lateness_hours=3)


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    use_moto(moto, monkeypatch)
    create_table(moto.client("dynamodb"), TABLE)
    moto.client("s3").create_bucket(Bucket=BUCKET)
    return moto


def _speed(aws: MotoServer) -> tuple[SpeedStore, Quarantine, list[dict[str, Any]]]:
    logged: list[dict[str, Any]] = []
    store = SpeedStore(TABLE, aws.client("dynamodb"), ttl_s=3600)
    return store, Quarantine(BUCKET, aws.client("s3"), logged.append), logged


def _feed_batches(layer_records: list[KafkaRecord], size: int, rng: random.Random
                  ) -> list[list[KafkaRecord]]:
    """Batches as a mapping would deliver them: each partition in offset order."""
    ordered = sorted(layer_records, key=lambda r: (r.topic, r.partition, r.offset))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _speed_views(aws: MotoServer, period: str) -> dict[str, dict[str, Any]]:
    """The speed layer's price aggregates as {period: PeriodViews json} (prices only)."""
    ddb = aws.client("dynamodb")
    items = ddb.scan(TableName=TABLE)["Items"]
    views: dict[str, dict[tuple[str, str], Any]] = {}
    for item in items:
        sk = item["sk"]["S"]
        if not item["pk"]["S"].startswith("market#") or not sk.startswith(f"{period}#"):
            continue
        _, key, token = sk.split("#", 2)
        agg, _ = aggregate_from_item(item)
        views.setdefault(key, {})[(item["market_id"]["S"], token)] = agg.to_json()
    return {k: {f"{m}/{t}": a for (m, t), a in sorted(v.items())} for k, v in views.items()}


def _feeds(aws: MotoServer) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for item in aws.client("dynamodb").scan(TableName=TABLE)["Items"]:
        if item["pk"]["S"].startswith("feed#"):
            out.setdefault(item["sk"]["S"][5:], {})[item["pk"]["S"][5:]] = int(
                item["count"]["N"])
    return out


def _batch_json(view: PeriodViews) -> dict[str, Any]:
    return {f"{m}/{t}": agg.to_json() for (m, t), (_, agg) in sorted(view.prices.items())}


def test_both_layers_agree_on_closed_periods_despite_duplicates_and_disorder(
    aws: MotoServer,
) -> None:
    rng = random.Random(5)
    records = redelivered(scenario(21, hours=4), seed=2)
    store, quarantine, logged = _speed(aws)
    counted = duplicates = poison = 0
    for batch in _feed_batches(records, 17, rng):
        event = build_event(batch, source=rng.choice(["aws:kafka", "SelfManagedKafka"]))
        outcome = consume(parse_event(event), store=store, quarantine=quarantine,
                          config=CONFIG)
        assert outcome.failures == []
        counted, duplicates = counted + outcome.counted, duplicates + outcome.duplicates
        poison += outcome.poison
    # the batch layer gets the same records, archived in other batches and shuffled
    layer = BatchLayer(BUCKET, aws.client("s3"), CONFIG)
    shuffled = list(records)
    rng.shuffle(shuffled)
    for i in range(0, len(shuffled), 23):
        layer.archive(tuple(shuffled[i:i + 23]))

    assert counted + duplicates + poison == len(records)
    assert poison == len(decode_all(records, CONFIG).poison) >= 2  # redelivered poison too
    speed_hours = _speed_views(aws, "hour")
    assert len(speed_hours) == 4
    for hour, speed in speed_hours.items():
        batch_view = layer.compute_hour(hour)
        assert _batch_json(batch_view) == speed, hour
        assert batch_view.feeds == _feeds(aws).get(hour, {})
    (day, speed_day), = _speed_views(aws, "day").items()
    written = close_periods(layer, {"day": day})
    body = json.loads(aws.client("s3").get_object(Bucket=BUCKET, Key=written[0])["Body"].read())
    assert _batch_json(PeriodViews.from_json(body)) == speed_day
    poisoned = aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="failures/poison/")
    assert {e["Key"].rsplit("/", 2)[-2] for e in poisoned["Contents"]} >= {"partition=0",
                                                                            "partition=1"}
    assert any(e.get("event") == "views.poison" for e in logged)


def test_a_redelivered_or_reproduced_record_counts_once(aws: MotoServer) -> None:
    store, quarantine, _ = _speed(aws)
    value = price_value("m1", "t1", 0.25, BASE)
    first = record(PRICE_TOPIC, 0, 10, value, relay_id="rid-1")
    again_same_offset = first
    produced_twice = record(PRICE_TOPIC, 0, 11, value, relay_id="rid-1")
    resent = record(PRICE_TOPIC, 0, 12, value, relay_id="rid-cold-start")
    other = record(PRICE_TOPIC, 0, 13, price_value("m1", "t1", 0.75, BASE + timedelta(
        minutes=30)), relay_id="rid-2")
    for batch in ([first], [again_same_offset, produced_twice], [resent, other], [other]):
        consume(parse_event(build_event(batch)), store=store, quarantine=quarantine,
                config=CONFIG)
    item = aws.client("dynamodb").get_item(TableName=TABLE, Key={
        "pk": {"S": "market#m1"}, "sk": {"S": f"hour#{hour_of(BASE)}#t1"}})["Item"]
    agg, version = aggregate_from_item(item)
    assert (agg.count, agg.total, agg.last_price) == (2, Decimal("1"), Decimal("0.75"))
    assert agg.average == Decimal("0.5")
    assert version == 2
    seen = aws.client("dynamodb").get_item(TableName=TABLE, Key={
        "pk": {"S": f"seen#price#t1#{BASE:%Y-%m-%dT%H:%M:%SZ}"}, "sk": {"S": "seen"}})["Item"]
    assert (seen["position"]["S"], seen["relay_id"]["S"]) == (f"{PRICE_TOPIC}-0-10", "rid-1")


def test_a_failing_write_stops_its_partition_and_is_reported(aws: MotoServer) -> None:
    store, quarantine, _ = _speed(aws)
    store.table = "no-such-table"
    recs = [record(PRICE_TOPIC, p, o, price_value("m", f"t{o}", 0.5, BASE), relay_id=f"{p}{o}")
            for p in (0, 1) for o in (3, 4)]
    outcome = consume(parse_event(build_event(recs)), store=store, quarantine=quarantine,
                      config=CONFIG)
    assert outcome.failures == [{"itemIdentifier": {"partition": 0, "offset": 3}},
                                {"itemIdentifier": {"partition": 1, "offset": 3}}]


@pytest.mark.parametrize("partial", ["true", "false"])
def test_without_partial_batch_responses_the_handler_fails_the_batch(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch, partial: str
) -> None:
    monkeypatch.setattr(views_speed, "_RUNTIME", None)
    monkeypatch.setenv("VIEWS_TABLE", "no-such-table")
    monkeypatch.setenv("VIEWS_PARTIAL_BATCH_RESPONSE", partial)
    event = build_event([record(PRICE_TOPIC, 2, 7, price_value("m", "t", 0.5, BASE),
                                relay_id="r")])
    if partial == "true":
        assert views_speed.handler(event, None) == {
            "batchItemFailures": [{"itemIdentifier": {"partition": 2, "offset": 7}}]}
    else:
        with pytest.raises(views_speed.BatchFailed):
            views_speed.handler(event, None)


def test_serving_merges_batch_views_of_closed_hours_with_the_speed_layer(
    aws: MotoServer,
) -> None:
    store, quarantine, _ = _speed(aws)
    points = [record(PRICE_TOPIC, 0, i, price_value("m", "t", p, BASE + timedelta(hours=i)),
                     relay_id=f"r{i}", produced=BASE + timedelta(hours=i, minutes=5))
              for i, p in enumerate([0.2, 0.4, 0.6, 0.8])]
    consume(parse_event(build_event(points)), store=store, quarantine=quarantine,
            config=CONFIG)
    layer = BatchLayer(BUCKET, aws.client("s3"), CONFIG)
    layer.archive(tuple(points[:2]))  # the batch layer has only seen the first two hours
    for i in range(2):
        layer.write_hour(hour_of(BASE + timedelta(hours=i)))
    now = BASE + timedelta(hours=6, minutes=30)  # hours 8..10 closed with 3 h lateness
    serve = Server(CONFIG, aws.client("dynamodb"), layer, clock=lambda: now)
    closed = serve.answer("m", hour=hour_of(BASE))
    assert (closed["source"], closed["outcomes"][0]["average"]) == ("batch", "0.2")
    unclosed = serve.answer("m", hour=hour_of(BASE + timedelta(hours=3)))
    assert (unclosed["source"], unclosed["outcomes"][0]["average"]) == ("speed", "0.8")
    no_view = serve.answer("m", hour=hour_of(BASE + timedelta(hours=2)))
    assert no_view["source"] == "speed (no batch view yet)"
    day = serve.answer("m", day=BASE.strftime("%Y-%m-%d"))
    assert day["source"] == "batch+speed"
    assert (day["outcomes"][0]["count"], day["outcomes"][0]["average"]) == (4, "0.5")
    assert hour_view_key("2026-11-28T08") == "views/hour/dt=2026-11-28/hour=08.json"


def test_the_schedule_closes_the_hour_behind_the_lateness(aws: MotoServer) -> None:
    layer = BatchLayer(BUCKET, aws.client("s3"), CONFIG)
    at = datetime(2026, 11, 29, 3, 10, tzinfo=timezone.utc)  # 3 h lateness: 23:00 closes
    written = close_periods(layer, {"time": at.isoformat()})
    assert written == ["views/hour/dt=2026-11-28/hour=23.json", "views/day/dt=2026-11-28.json"]


def test_the_cli_answers_from_the_speed_layer_and_explains_bad_periods(
    aws: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    store, quarantine, _ = _speed(aws)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    point = record(PRICE_TOPIC, 0, 0, price_value("m9", "t9", 0.42, now), relay_id="r")
    consume(parse_event(build_event([point])), store=store, quarantine=quarantine,
            config=CONFIG)
    args = ["--market", "m9", "--table", TABLE, "--bucket", BUCKET]
    assert views_serve.main([*args, "--hour", hour_of(now)]) == 0
    out = capsys.readouterr().out
    assert "(speed)" in out
    assert "average 0.42" in out
    assert views_serve.main([*args, "--day", "28-11-2026"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
