"""Aggregation math and dedupe shared by the speed and batch layers."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from views_model import (
    Aggregate,
    ConfigError,
    PeriodViews,
    PoisonRecord,
    ViewsConfig,
    compute_views,
    decode_all,
    decode_price,
    item_from_row,
    point_from_row,
)

from tests.views_data import (
    BASE,
    PRICE_TOPIC,
    RSS_TOPIC,
    feed_value,
    price_value,
    record,
    scenario,
)

CONFIG = ViewsConfig()


def _rows(view: PeriodViews) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return view.price_rows("p"), view.feed_rows("p")


def test_aggregate_counts_sums_and_averages_exactly() -> None:
    points = [decode_price(record(PRICE_TOPIC, 0, i, price_value("m", "t", p, BASE +
                                                                   timedelta(minutes=i)),
                                  relay_id=str(i))) for i, p in enumerate([0.1, 0.2, 0.3])]
    agg = Aggregate()
    for point in points:
        agg = agg.add(point)
    assert (agg.count, agg.total, agg.low, agg.high) == (3, Decimal("0.6"), Decimal("0.1"),
                                                         Decimal("0.3"))
    assert agg.average == Decimal("0.200000000000")  # 0.1+0.2+0.3 is exact in decimals
    assert (agg.last_price, agg.last_ts) == (Decimal("0.3"), "2026-11-28T08:02:00Z")


# distinct minutes: one identity per point, as after dedupe
prices = st.lists(st.tuples(st.decimals("0", "1", places=4), st.integers(0, 59)), min_size=1,
                  max_size=30, unique_by=lambda pair: pair[1])


@given(prices, st.randoms())
def test_merging_is_order_independent(values: list[tuple[Decimal, int]], rng: random.Random
                                      ) -> None:
    points = [decode_price(record(PRICE_TOPIC, 0, i, price_value("m", "t", 0.5, BASE),
                                  relay_id=str(i))) for i in range(len(values))]
    points = [p.__class__(**{**p.__dict__, "price": v, "ts": f"2026-11-28T08:{m:02d}:00Z"})
              for p, (v, m) in zip(points, values, strict=True)]
    one = Aggregate()
    for point in points:
        one = one.add(point)
    rng.shuffle(points)
    halves = [Aggregate(), Aggregate()]
    for i, point in enumerate(points):
        halves[i % 2] = halves[i % 2].add(point)
    assert halves[1].merge(halves[0]) == one == halves[0].merge(halves[1])


def test_views_count_each_price_and_feed_item_once_whatever_the_order() -> None:
    records = scenario(7)
    first = compute_views(decode_all(records, CONFIG), period="hour")
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    second = compute_views(decode_all(shuffled + records[:40], CONFIG), period="hour")
    assert {k: _rows(v) for k, v in first.items()} == {k: _rows(v) for k, v in second.items()}
    # 3 markets x 2 outcomes x 3 points per hour, duplicates and resends not counted
    for view in first.values():
        assert {agg.count for _, agg in view.prices.values()} == {3}
        assert len(view.prices) == 6


def test_day_view_is_the_merge_of_its_hour_views() -> None:
    decoded = decode_all(scenario(11), CONFIG)
    hours = compute_views(decoded, period="hour")
    (day,) = compute_views(decoded, period="day").values()
    merged = PeriodViews.empty()
    for view in hours.values():
        merged = merged.merge(view)
    assert _rows(merged) == _rows(day)
    prices, feeds = (json.loads(json.dumps(rows)) for rows in _rows(day))
    assert _rows(PeriodViews.from_rows(prices, feeds)) == _rows(day)


def test_the_lowest_offset_wins_among_records_with_one_identity() -> None:
    a = record(PRICE_TOPIC, 0, 5, price_value("m", "t", 0.4, BASE), relay_id="x")
    b = record(PRICE_TOPIC, 0, 9, price_value("m", "t", 0.9, BASE), relay_id="y")
    (view,) = compute_views(decode_all([b, a], CONFIG), period="hour").values()
    assert view.prices[("m", "t")][1].total == Decimal("0.4")


@pytest.mark.parametrize("value", [
    b"not json", b"[1, 2]", {"market_id": "m", "token_id": "t", "ts": "2026-11-28T08:00:00Z"},
    {"market_id": "m", "token_id": "t", "price": "0.5", "ts": "2026-11-28T08:00:00Z"},
    {"market_id": "m", "token_id": "t", "price": 0.5, "ts": "yesterday"},
    {"market_id": "", "token_id": "t", "price": 0.5, "ts": "2026-11-28T08:00:00Z"},
])
def test_poison_prices_are_named(value: object) -> None:
    rec = record(PRICE_TOPIC, 0, 1, value, relay_id="p")
    with pytest.raises(PoisonRecord):
        decode_price(rec)
    assert decode_all([rec], CONFIG).poison[0][0] == rec


def test_infinite_prices_are_poison() -> None:
    rec = record(PRICE_TOPIC, 0, 1, b'{"market_id":"m","token_id":"t","price":1e999,'
                 b'"ts":"2026-11-28T08:00:00Z"}', relay_id="p")
    with pytest.raises(PoisonRecord, match="finite or not below"):
        decode_price(rec)


def test_feed_items_count_in_their_fetch_hour() -> None:
    fetched = datetime(2026, 11, 28, 9, 59, tzinfo=timezone.utc)
    rec = record(RSS_TOPIC, 0, 0, {"source": "f", "guid": "g", "fetched_at":
                                    fetched.isoformat()}, relay_id="r")
    (key, view), = compute_views(decode_all([rec, rec], CONFIG), period="hour").items()
    assert (key, view.feeds) == ("2026-11-28T09", {"f": 1})


def test_a_resent_feed_item_counts_once_in_its_first_hour_and_day() -> None:
    first = record(RSS_TOPIC, 0, 0, feed_value("f", "g", BASE), relay_id="r1")
    resent = record(RSS_TOPIC, 0, 7, feed_value("f", "g", BASE + timedelta(hours=3)),
                    relay_id="r2")
    decoded = decode_all([resent, first], CONFIG)
    hours = compute_views(decoded, period="hour")
    assert {k: v.feeds for k, v in hours.items()} == {"2026-11-28T08": {"f": 1}}
    assert [v.feeds for v in compute_views(decoded, period="day").values()] == [{"f": 1}]


@pytest.mark.parametrize("line", [
    None, [], {"price": "x"}, {"market_id": "m", "token_id": "t", "price": "0.5",
                              "ts": "2026-11-28T08:00:00Z", "partition": 0, "offset": "1"},
])
def test_an_unreadable_archive_row_is_poison(line: Any) -> None:
    with pytest.raises(PoisonRecord):
        point_from_row(line)
    with pytest.raises(PoisonRecord):
        item_from_row(line)


def test_config_names_the_variable_it_refuses() -> None:
    with pytest.raises(ConfigError, match="VIEWS_LATENESS_HOURS"):
        ViewsConfig.from_env({"VIEWS_LATENESS_HOURS": "soon"})
    with pytest.raises(ConfigError, match="VIEWS_TABLE"):
        ViewsConfig.from_env({}).require("VIEWS_TABLE")
