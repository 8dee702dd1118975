"""The batch views as SQL (DuckDB over the archive's Parquet rows) equal views_model's
aggregates on the shuffled, duplicated, late data the layer tests use, locally and as the
close computes them; the archive's Parquet keeps every price exactly."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from views_batch import BatchLayer
from views_model import (
    AVERAGE_PLACES,
    PRICE_LIMIT,
    PeriodViews,
    ViewsConfig,
    compute_views,
    decode_all,
)
from views_speed import Quarantine
from views_sql import PRICE_TYPE, engine, run_duckdb, statements
from views_state import ViewsState

from devtools.moto_server import MotoServer, use_moto
from layer_build.deploy_views import create_table
from tests.functional.test_views_layers import _feed_batches
from tests.views_data import redelivered, scenario

TABLE, BUCKET = "views-sql", "views-sql-bucket"
CONFIG = ViewsConfig(table=TABLE, bucket=BUCKET)


def _archive_copy(moto: MotoServer, records: list[Any], into: Path) -> BatchLayer:
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
            assert entry["Key"].endswith(".parquet")
            target.write_bytes(s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read())
    return layer


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

    layer = _archive_copy(moto, records, tmp_path)

    prices, feeds = run_duckdb(tmp_path, period)

    expected = compute_views(decode_all(records, CONFIG), period=period)
    if period == "hour":  # the close function's own path: DuckDB over the bucket's objects
        for hour, view in expected.items():
            computed, bad = layer.compute_hour(hour)
            assert (computed.prices, computed.feeds, bad) == (view.prices, view.feeds, 0)
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


PLACES = -int(AVERAGE_PLACES.as_tuple().exponent)
LARGEST = PRICE_LIMIT - AVERAGE_PLACES  # what the decoder admits, quantized to 12 places
_prices = st.decimals(min_value=-LARGEST, max_value=LARGEST, places=PLACES, allow_nan=False,
                      allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(prices=st.lists(_prices, min_size=1, max_size=20))
def test_the_archives_parquet_keeps_every_decoded_price_exactly(prices: list[Decimal]) -> None:
    rows = [{"topic": "p", "partition": 0, "offset": n, "timestamp_ms": n, "relay_id": f"r{n}",
             "market_id": "m", "token_id": "t", "outcome": "Yes", "question": "q",
             "price": format(price, "f"), "ts": f"2026-11-28T08:{n:02d}:00Z"}
            for n, price in enumerate(prices)]
    with engine() as sql:
        sql.add_object("archive_prices", sql.parquet("archive_prices", rows))
        read = [row[0] for row in sql.connection.execute(
            'SELECT price FROM archive_prices ORDER BY "offset"').fetchall()]
        ((got,), _) = sql.rows("hour")
    assert read == prices
    assert got["sum"] == sum(prices)
    assert (got["min"], got["max"], got["last"]) == (min(prices), max(prices), prices[-1])


def test_the_parquet_price_column_is_the_fixed_decimal(tmp_path: Path) -> None:
    row = {"topic": "p", "partition": 0, "offset": 1, "timestamp_ms": 1, "relay_id": "r",
           "market_id": "m", "token_id": "t", "outcome": "", "question": "",
           "price": "0.5", "ts": "2026-11-28T08:00:00Z"}
    path = tmp_path / "rows.parquet"
    with engine() as sql:
        path.write_bytes(sql.parquet("archive_prices", [row]))
    schema = duckdb.execute(f"SELECT name, type, precision, scale FROM parquet_schema('{path}') "
                            "WHERE name = 'price'").fetchall()
    assert PRICE_TYPE == "DECIMAL(24,12)"
    assert schema == [("price", "FIXED_LEN_BYTE_ARRAY", 24, 12)]
    with engine() as sql, pytest.raises(duckdb.Error):  # out of range: refused, never rounded
        sql.parquet("archive_prices", [{**row, "price": str(PRICE_LIMIT)}])
