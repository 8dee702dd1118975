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
from views_batch import (
    BatchLayer,
    close,
    close_periods,
    day_view_keys,
    hour_view_keys,
    hours_between,
)
from views_event import KafkaRecord, build_event, parse_event
from views_model import (
    PeriodViews,
    ViewsConfig,
    compute_views,
    decode_all,
    decode_price,
    hour_of,
    price_row,
)
from views_serve import Server
from views_speed import Quarantine, SpeedStore, aggregate_from_item, consume
from views_state import ViewsState

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


def _speed(aws: MotoServer, config: ViewsConfig = CONFIG, now: float | None = None
           ) -> tuple[SpeedStore, Quarantine, list[dict[str, Any]]]:
    logged: list[dict[str, Any]] = []
    store = SpeedStore(TABLE, aws.client("dynamodb"), config)
    if now is not None:
        store.clock = lambda: now
    return store, Quarantine(BUCKET, aws.client("s3"), logged.append), logged


def _layer(aws: MotoServer, config: ViewsConfig = CONFIG
           ) -> tuple[BatchLayer, list[dict[str, Any]]]:
    logged: list[dict[str, Any]] = []
    s3 = aws.client("s3")
    return BatchLayer(BUCKET, s3, config, ViewsState(TABLE, aws.client("dynamodb")),
                      Quarantine(BUCKET, s3, logged.append)), logged


def _feed_batches(layer_records: list[KafkaRecord], size: int, rng: random.Random
                  ) -> list[list[KafkaRecord]]:
    """Batches as a mapping would deliver them: each partition in offset order, the
    partitions interleaved at random."""
    queues = [sorted((r for r in layer_records if (r.topic, r.partition) == key),
                     key=lambda r: r.offset)
              for key in sorted({(r.topic, r.partition) for r in layer_records})]
    batches: list[list[KafkaRecord]] = []
    while any(queues):
        batch: list[KafkaRecord] = []
        while len(batch) < size and any(queues):
            queue = rng.choice([q for q in queues if q])
            batch.append(queue.pop(0))
        batches.append(batch)
    return batches


def _speed_views(aws: MotoServer) -> dict[str, dict[str, Any]]:
    """The speed layer's hour price aggregates as {hour: {market/token: aggregate json}}."""
    views: dict[str, dict[str, Any]] = {}
    for item in aws.client("dynamodb").scan(TableName=TABLE)["Items"]:
        if item["pk"]["S"].startswith("market#"):
            _, hour, token = item["sk"]["S"].split("#", 2)
            views.setdefault(hour, {})[f"{item['market_id']['S']}/{token}"] = \
                aggregate_from_item(item)[0].to_json()
    return views


def _feeds(aws: MotoServer) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for item in aws.client("dynamodb").scan(TableName=TABLE)["Items"]:
        if item["pk"]["S"] == "feeds":
            _, hour, source = item["sk"]["S"].split("#", 2)
            out.setdefault(hour, {})[source] = int(item["count"]["N"])
    return out


def _batch_json(view: PeriodViews) -> dict[str, Any]:
    return {f"{m}/{t}": agg.to_json() for (m, t), (_, agg) in sorted(view.prices.items())}


def _both_layers(aws: MotoServer, records: list[KafkaRecord], seed: int
                 ) -> tuple[BatchLayer, list[dict[str, Any]]]:
    rng = random.Random(seed)
    store, quarantine, logged = _speed(aws)
    for batch in _feed_batches(records, 17, rng):
        event = build_event(batch, source=rng.choice(["aws:kafka", "SelfManagedKafka"]))
        outcome = consume(parse_event(event), store=store, quarantine=quarantine,
                          config=CONFIG)
        assert outcome.failures == []
    layer, _ = _layer(aws)
    for batch in _feed_batches(records, 23, rng):
        layer.archive(tuple(batch))
    return layer, logged


def test_both_layers_agree_on_closed_periods_despite_duplicates_and_disorder(
    aws: MotoServer,
) -> None:
    # Two markets (one per price partition) still give, with these seeds, 12 records
    # produced twice, 2 cold-start resends, 13 redeliveries, both partitions of both topics
    # and a poison record on each price partition: every case the claim covers, in 91
    # records instead of 132 (each one several moto round trips).
    records = redelivered(scenario(21, markets=2, hours=4), seed=2)
    layer, logged = _both_layers(aws, records, 5)
    expected = compute_views(decode_all(records, CONFIG), period="hour")

    speed_hours = _speed_views(aws)
    assert len(speed_hours) == 4
    for hour, speed in speed_hours.items():
        batch_view, bad = layer.compute_hour(hour)
        assert bad == 0
        assert _batch_json(batch_view) == speed == _batch_json(expected[hour]), hour
        assert batch_view.feeds == _feeds(aws).get(hour, {}) == expected[hour].feeds
    report = close_periods(layer, {"day": BASE.strftime("%Y-%m-%d")})
    assert report.differences == 0
    (day_view,) = compute_views(decode_all(records, CONFIG), period="day").values()
    served = layer.day_view(BASE.strftime("%Y-%m-%d"))
    assert served is not None
    assert _batch_json(served) == _batch_json(day_view)
    assert served.feeds == day_view.feeds
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


def test_a_failing_write_stops_its_partition_and_names_its_topic_partition(
    aws: MotoServer,
) -> None:
    store, quarantine, _ = _speed(aws)
    store.table = "no-such-table"
    recs = [record(PRICE_TOPIC, p, o, price_value("m", f"t{o}", 0.5, BASE), relay_id=f"{p}{o}")
            for p in (0, 1) for o in (3, 4)]
    outcome = consume(parse_event(build_event(recs)), store=store, quarantine=quarantine,
                      config=CONFIG, state=ViewsState(TABLE, aws.client("dynamodb")))
    assert outcome.failures == [
        {"itemIdentifier": {"partition": f"{PRICE_TOPIC}-0", "offset": 3}},
        {"itemIdentifier": {"partition": f"{PRICE_TOPIC}-1", "offset": 3}}]


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
        assert views_speed.handler(event, None) == {"batchItemFailures": [
            {"itemIdentifier": {"partition": f"{PRICE_TOPIC}-2", "offset": 7}}]}
    else:
        with pytest.raises(views_speed.BatchFailed):
            views_speed.handler(event, None)


def _point(i: int, price: float, minutes: int = 0, partition: int = 0) -> KafkaRecord:
    moment = BASE + timedelta(hours=i, minutes=minutes)
    return record(PRICE_TOPIC, partition, i * 100 + minutes, price_value("m", "t", price, moment),
                  relay_id=f"r{i}-{minutes}", produced=moment + timedelta(minutes=5))


def _served(aws: MotoServer, layer: BatchLayer, now: datetime, **period: str
            ) -> tuple[str, int, str]:
    serve = Server(CONFIG, aws.client("dynamodb"), layer, clock=lambda: now)
    answer = serve.answer("m", **period)
    (row,) = answer["outcomes"]
    return answer["source"], row["count"], row["average"]


def test_serving_merges_batch_views_of_closed_hours_with_the_speed_layer(
    aws: MotoServer,
) -> None:
    store, quarantine, _ = _speed(aws)
    points = [_point(i, p) for i, p in enumerate([0.2, 0.4, 0.6, 0.8])]
    consume(parse_event(build_event(points)), store=store, quarantine=quarantine,
            config=CONFIG)
    layer, _ = _layer(aws)
    layer.archive(tuple(points))
    now = BASE + timedelta(hours=6, minutes=30)  # hours 8..10 closable with 3 h lateness
    report = close(layer, now)
    today = [k.split("/")[3] for k in report.written if "/dt=2026-11-28/" in k]
    assert today == ["hour=00", "hour=01", "hour=02", "hour=03", "hour=04", "hour=05",
                     "hour=06", "hour=07", "hour=08", "hour=09", "hour=10"]  # swept too
    assert _served(aws, layer, now, hour=hour_of(BASE)) == ("batch", 1, "0.2")
    assert _served(aws, layer, now, hour=hour_of(BASE + timedelta(hours=3))) == (
        "speed", 1, "0.8")
    assert _served(aws, layer, now, day=BASE.strftime("%Y-%m-%d")) == ("batch+speed", 4, "0.5")
    assert hour_view_keys("2026-11-28T08")[0] == (
        "views/prices_hour/dt=2026-11-28/hour=08/view.ndjson")


def test_a_late_record_marks_its_closed_hour_dirty_and_the_next_close_recomputes_hour_and_day(
    aws: MotoServer,
) -> None:
    day = BASE.strftime("%Y-%m-%d")
    first = [_point(0, 0.2)]
    end_of_day = datetime(2026, 11, 29, 3, 30, tzinfo=timezone.utc)  # every hour closable
    store, quarantine, _ = _speed(aws, now=end_of_day.timestamp())
    layer, _ = _layer(aws)
    consume(parse_event(build_event(first)), store=store, quarantine=quarantine, config=CONFIG)
    layer.archive(tuple(first))
    close(layer, end_of_day)
    assert _served(aws, layer, end_of_day, day=day) == ("batch", 1, "0.2")

    late = [_point(0, 0.4, minutes=30)]
    consume(parse_event(build_event(late)), store=store, quarantine=quarantine, config=CONFIG)
    # served from the speed layer (complete) until the archive has it and the hour reclosed
    assert _served(aws, layer, end_of_day, hour=hour_of(BASE)) == (
        "speed (batch view pending)", 2, "0.3")
    assert close(layer, end_of_day).deferred == [hour_of(BASE)]  # the archive lacks it
    layer.archive(tuple(late))
    report = close(layer, end_of_day + timedelta(hours=1))
    assert [k for k in report.written if f"dt={day}" in k] == [
        hour_view_keys(hour_of(BASE))[0], day_view_keys(day)[0]]
    assert _served(aws, layer, end_of_day, hour=hour_of(BASE)) == ("batch", 2, "0.3")
    assert _served(aws, layer, end_of_day, day=day) == ("batch", 2, "0.3")


def test_an_hour_waits_for_a_lagging_archive_and_a_missed_run_is_swept(aws: MotoServer) -> None:
    points = [_point(i, 0.1 * (i + 1)) for i in range(3)]
    store, quarantine, _ = _speed(aws)
    consume(parse_event(build_event(points)), store=store, quarantine=quarantine,
            config=CONFIG)
    layer, _ = _layer(aws)
    layer.archive(tuple(points[:1]))  # the archive consumer is behind
    now = BASE + timedelta(hours=6, minutes=1)
    report = close(layer, now)
    assert {hour_of(BASE + timedelta(hours=i)) for i in range(3)} <= set(report.deferred)
    assert not any(f"/dt=2026-11-28/hour={h}/" in key for key in report.written
                   for h in ("08", "09", "10"))
    assert report.archive_lag_s == 2 * 3600
    assert _served(aws, layer, now, hour=hour_of(BASE + timedelta(hours=1))) == (
        "speed (batch view pending)", 1, "0.2")
    layer.archive(tuple(points[1:]))
    # the runs of the next two hours are missed; the third closes everything behind it
    report = close(layer, now + timedelta(hours=3))
    closed = {k.split("/")[3] for k in report.written if "prices_hour" in k}
    assert {"hour=08", "hour=09", "hour=10", "hour=11"} <= closed
    for i in range(3):
        assert _served(aws, layer, now, hour=hour_of(BASE + timedelta(hours=i))) == (
            "batch", 1, str(Decimal("0.1") * (i + 1)))


def test_an_unreadable_archive_object_or_line_is_quarantined_and_the_hour_still_closes(
    aws: MotoServer,
) -> None:
    layer, logged = _layer(aws)
    layer.archive((_point(0, 0.5),))
    s3 = aws.client("s3")
    (key,) = [e["Key"] for e in s3.list_objects_v2(Bucket=BUCKET, Prefix="archive/")["Contents"]]
    assert key.endswith(".parquet")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    truncated = key.replace("/0-0-0.parquet", "/0-7-7.parquet")
    s3.put_object(Bucket=BUCKET, Key=truncated, Body=body[: len(body) // 2])
    # an object of the JSON-lines archive that came before Parquet: still read, line by line
    late = _point(0, 0.25, minutes=1)
    row = json.dumps(price_row(decode_price(late), late)).encode()
    legacy = key.replace("/0-0-0.parquet", "/0-1-1.ndjson")
    s3.put_object(Bucket=BUCKET, Key=legacy, Body=row + b"\n" + row[:20] + b"\n\n")
    report = close_periods(layer, {"hour": hour_of(BASE)})
    assert report.bad_lines == 3
    assert [e["object"] for e in logged if e["event"] == "views.bad_archive_object"] == [
        truncated]
    assert [e["line"] for e in logged if e["event"] == "views.bad_archive_line"] == [2, 3]
    kept = s3.list_objects_v2(Bucket=BUCKET, Prefix="failures/archive/")["Contents"]
    assert sorted(e["Key"] for e in kept) == [
        f"failures/archive/{legacy}/line=2.json", f"failures/archive/{legacy}/line=3.json",
        f"failures/archive/{truncated}"]
    view = layer.hour_view(hour_of(BASE))
    assert view is not None
    assert (view.prices[("m", "t")][1].count, view.prices[("m", "t")][1].total) == (
        2, Decimal("0.75"))


def test_backfill_recomputes_a_range_to_the_same_bytes(aws: MotoServer) -> None:
    layer, _ = _layer(aws)
    layer.archive(tuple(_point(i, 0.3) for i in range(5)))
    event = {"from": "2026-11-28", "to": "2026-11-28T12"}
    first = close_periods(layer, event).written
    s3 = aws.client("s3")
    before = {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in first}
    again = close_periods(layer, event).written
    assert again == first
    assert len(first) == 13  # hours 00..12; the day waits for its other hours
    assert before == {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in again}
    with pytest.raises(ValueError, match="after"):
        hours_between("2026-11-28", "2026-11-27")


def test_the_cli_answers_from_the_speed_layer_and_explains_bad_periods(
    aws: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    store, quarantine, _ = _speed(aws)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    point = record(PRICE_TOPIC, 0, 0, price_value("m9", "t9", 0.42, now), relay_id="r")
    consume(parse_event(build_event([point])), store=store, quarantine=quarantine,
            config=CONFIG)
    args = ["--market", "m9", "--market", "m8", "--table", TABLE, "--bucket", BUCKET]
    assert views_serve.main([*args, "--hour", hour_of(now)]) == 0
    header, row, empty = capsys.readouterr().out.splitlines()
    assert header.split() == ["period", "source", "market", "outcome", "average", "n", "min",
                              "max", "last"]
    assert row.split() == [hour_of(now), "speed", "m9", "Yes", "0.42", "1", "0.42", "0.42",
                           "0.42"]
    assert empty.split()[2:5] == ["m8", "-", "-"]
    yesterday = (now - timedelta(days=1)).strftime("%Y-%m-%d")
    assert views_serve.main([*args, "--from", yesterday, "--json"]) == 0
    series = json.loads(capsys.readouterr().out)
    assert [day["period"] for day in series["days"]] == [yesterday, now.strftime("%Y-%m-%d")]
    assert series["days"][1]["markets"][0]["outcomes"][0]["count"] == 1
    assert views_serve.main([*args, "--day", "28-11-2026"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_closed_hours_speed_aggregates_expire_after_the_hour_closed_or_was_written(
    aws: MotoServer,
) -> None:
    config = ViewsConfig(table=TABLE, bucket=BUCKET, lateness_hours=3, speed_ttl_days=2)
    now = (BASE + timedelta(days=30)).timestamp()
    store, quarantine, _ = _speed(aws, config, now=now)
    recent = BASE + timedelta(days=30, hours=1)
    points = [_point(0, 0.5), record(PRICE_TOPIC, 0, 1, price_value("m", "t", 0.5, recent),
                                     relay_id="recent")]
    consume(parse_event(build_event(points)), store=store, quarantine=quarantine,
            config=config)
    expiry = {item["sk"]["S"].split("#")[1]: int(item["expires_at"]["N"])
              for item in aws.client("dynamodb").scan(TableName=TABLE)["Items"]
              if item["pk"]["S"] == "market#m"}
    assert expiry == {
        hour_of(BASE): int(now) + 2 * 86400,  # replayed long after: from when it was written
        hour_of(recent): int((recent + timedelta(hours=4)).timestamp()) + 2 * 86400,
    }
