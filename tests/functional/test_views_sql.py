"""The batch views as SQL (DuckDB over the archive's rows) equal views_model's aggregates on
the shuffled, duplicated, late data the layer tests use."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from views_batch import BatchLayer
from views_model import PeriodViews, ViewsConfig, compute_views, decode_all
from views_speed import Quarantine
from views_sql import run_duckdb, statements
from views_state import ViewsState

from devtools.moto_server import MotoServer, use_moto
from layer_build.deploy_views import create_table
from tests.functional.test_views_layers import _feed_batches
from tests.views_data import redelivered, scenario

TABLE, BUCKET = "views-sql", "views-sql-bucket"
CONFIG = ViewsConfig(table=TABLE, bucket=BUCKET)


def _archive_copy(moto: MotoServer, records: list[Any], into: Path) -> None:
    """Archive ``records`` as the archive consumer does, then copy archive/ locally."""
    s3 = moto.client("s3")
    layer = BatchLayer(BUCKET, s3, CONFIG, ViewsState(TABLE, moto.client("dynamodb")),
                       Quarantine(BUCKET, s3, lambda _entry: None))
    for batch in _feed_batches(records, 19, random.Random(8)):
        layer.archive(tuple(batch))
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="archive/"):
        for entry in page["Contents"]:
            target = into / entry["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read())


def _model(view: PeriodViews) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {key: (agg.count, agg.total, agg.low, agg.high, agg.last_price, agg.last_ts)
            for key, (_, agg) in view.prices.items()}


@pytest.mark.parametrize("period", ["hour", "day"])
def test_the_sql_views_equal_the_model_on_duplicated_shuffled_late_data(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, period: str
) -> None:
    use_moto(moto, monkeypatch)
    create_table(moto.client("dynamodb"), TABLE)
    moto.client("s3").create_bucket(Bucket=BUCKET)
    records = redelivered(scenario(33, hours=6), seed=9)
    _archive_copy(moto, records, tmp_path)

    prices, feeds = run_duckdb(tmp_path, period)

    expected = compute_views(decode_all(records, CONFIG), period=period)
    got: dict[str, dict[tuple[str, str], tuple[Any, ...]]] = {}
    for row in prices:
        got.setdefault(row["period"], {})[(row["market_id"], row["token_id"])] = (
            row["count"], row["sum"], row["min"], row["max"], row["last"], row["last_ts"])
    assert got == {key: _model(view) for key, view in expected.items()}
    assert all(isinstance(row["sum"], Decimal) for row in prices)
    got_feeds: dict[str, dict[str, int]] = {}
    for row in feeds:
        got_feeds.setdefault(row["period"], {})[row["source"]] = row["count"]
    assert got_feeds == {key: view.feeds for key, view in expected.items() if view.feeds}


def test_the_statements_name_only_the_glue_tables() -> None:
    for sql in statements("hour") + statements("day"):
        assert "read_json" not in sql
        assert "FROM archive_prices" in sql or "FROM archive_feeds" in sql
