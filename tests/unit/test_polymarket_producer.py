"""The Polymarket producer's decoding, paging and hourly points on recorded API answers."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from polymarket_prices import (
    SOURCE_GAMMA,
    SOURCE_HISTORY,
    MarketFormatError,
    Outcome,
    PolymarketConfig,
    PolymarketProducer,
    decode_history,
    decode_market,
    fetch_markets,
)
from producer_common import ConfigError, Deadline, FetchFailed, JsonLog, error_entry

FIXTURES = Path(__file__).resolve().parents[2] / "devtools" / "fixtures" / "polymarket"
MARKETS: list[dict[str, Any]] = json.loads((FIXTURES / "markets.json").read_text())
HISTORY: dict[str, list[dict[str, Any]]] = json.loads(
    (FIXTURES / "prices_history.json").read_text()
)
OPEN = [m for m in MARKETS if m["active"] and not m["closed"]]
GAMMA, CLOB = "https://gamma.example.test", "https://clob.example.test"
NOW = 1714566600.0  # 2024-05-01T12:30:00Z


def market(market_id: str) -> dict[str, Any]:
    return next(m for m in MARKETS if m["id"] == market_id)


def tokens(market_id: str) -> list[str]:
    ids: list[str] = json.loads(market(market_id)["clobTokenIds"])
    return ids


@dataclass
class RecordedApi:
    """Answers Gamma and CLOB requests from the fixtures, the way the services page them."""

    markets: list[dict[str, Any]] = field(default_factory=lambda: list(OPEN))
    history: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: dict(HISTORY))
    failing: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, str | int]]] = field(default_factory=list)

    def __call__(self, url: str, params: Mapping[str, str | int], _deadline: Deadline) -> Any:
        self.calls.append((url, dict(params)))
        key = str(params.get("market", params.get("offset")))
        if (url, key) in self.failing:
            raise FetchFailed(self.failing[url, key])
        if url == f"{GAMMA}/markets":
            offset, limit = int(params["offset"]), int(params["limit"])
            return self.markets[offset:offset + limit]
        assert url == f"{CLOB}/prices-history"
        return {"history": self.history.get(str(params["market"]), [])}

    def gamma_pages(self) -> list[tuple[int | str, int | str]]:
        return [(p["offset"], p["limit"]) for url, p in self.calls if url.endswith("/markets")]


def producer(api: RecordedApi, **config: Any) -> PolymarketProducer:
    cfg = PolymarketConfig(gamma_url=GAMMA, clob_url=CLOB, **config)
    return PolymarketProducer(cfg, get=api, clock=lambda: NOW)


def quiet_log() -> JsonLog:
    return JsonLog("polymarket_producer", stream=io.StringIO())


# -- decoding -----------------------------------------------------------------------------


def test_json_string_fields_are_decoded_and_paired_by_position() -> None:
    raw = market("254007")
    assert isinstance(raw["clobTokenIds"], str)  # as Gamma sends them
    decoded = decode_market(raw)
    celtics, mavericks = tokens("254007")
    assert decoded.market_id == "254007"
    assert decoded.question == "NBA Finals 2024: Celtics vs. Mavericks"
    assert decoded.outcomes == (
        Outcome(celtics, "Celtics", 0.64),
        Outcome(mavericks, "Mavericks", 0.36),
    )


def test_fields_that_arrive_as_real_lists_are_accepted_too() -> None:
    raw = {**market("253591"), "outcomes": ["Yes", "No"], "outcomePrices": ["0.2", "0.8"],
           "clobTokenIds": tokens("253591")}
    assert [o.price for o in decode_market(raw).outcomes] == [0.2, 0.8]


def test_a_market_without_prices_still_pairs_outcomes_and_tokens() -> None:
    raw = {**market("253591"), "outcomePrices": None}
    assert [(o.name, o.price) for o in decode_market(raw).outcomes] == [("Yes", None), ("No", None)]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"clobTokenIds": '["1"]'}, "2 outcomes, 1 clobTokenIds and 2 outcomePrices"),
        ({"outcomePrices": '["0.5"]'}, "do not pair up"),
        ({"clobTokenIds": None}, "not traded on the CLOB"),
        ({"outcomes": "[Yes, No]"}, "outcomes is not a JSON list"),
        ({"outcomePrices": '{"Yes": 1}'}, "outcomePrices is a dict"),
        ({"outcomePrices": '["0.5", "n/a"]'}, "price 'n/a' is not a number"),
        ({"id": None}, "no id"),
    ],
)
def test_markets_that_cannot_be_paired_are_refused_with_the_reason(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(MarketFormatError, match=reason):
        decode_market({**market("253591"), **change})


def test_history_is_decoded_oldest_first_and_bad_points_skipped_with_the_reason() -> None:
    body = {"history": [{"t": 7200, "p": 0.5}, {"t": 3600, "p": "0.4"}]}
    assert decode_history(body).points == [(3600, 0.4), (7200, 0.5)]
    bad_bodies: list[Any] = [{}, {"history": {}}, []]
    for bad in bad_bodies:
        with pytest.raises(ValueError, match="history"):
            decode_history(bad)


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        ({"t": 1}, "'p'"),
        (5, "not an object"),
        ({"t": 10**20, "p": 0.5}, "not unix seconds"),
        ({"t": -1, "p": 0.5}, "not unix seconds"),
        ({"t": float("inf"), "p": 0.5}, "not unix seconds"),
        ({"t": "3600", "p": 0.5}, "not unix seconds"),
        ({"t": 3600, "p": True}, "not a number"),
        ({"t": 3600, "p": float("nan")}, "not finite"),
    ],
)
def test_one_bad_history_point_is_skipped_and_the_others_kept(point: Any, reason: str) -> None:
    history = decode_history({"history": [{"t": 7200, "p": 0.5}, point]})
    assert history.points == [(7200, 0.5)]
    (skipped,) = history.skipped
    assert reason in skipped


def test_a_bad_market_or_point_is_reported_in_the_summary_and_the_run_carries_on() -> None:
    token = tokens("253591")[0]
    markets: list[Any] = ["not a market", *OPEN[:2]]
    api = RecordedApi(markets=markets)
    api.history[token] = [*api.history.get(token, []), {"t": 10**20, "p": 0.5},
                          {"t": 3600, "p": True}]
    batch = producer(api, max_markets=3).poll(log=quiet_log())
    kinds = [e["kind"] for e in batch.errors]
    assert kinds.count("bad_market") == 1
    (bad_points,) = [e for e in batch.errors if e["kind"] == "bad_point"]
    assert (bad_points["token_id"], bad_points["points"]) == (token, 2)
    assert batch.records, "the other markets and points still make records"
    assert all(r["value"]["price"] is not True for r in batch.records)


def test_a_price_of_true_is_not_a_price() -> None:
    with pytest.raises(MarketFormatError, match="not a number"):
        decode_market({**market("253591"), "outcomePrices": "[true, false]"})


# -- paging -------------------------------------------------------------------------------


def test_pages_follow_the_offset_until_a_short_page() -> None:
    api = RecordedApi()
    listing = fetch_markets(api, gamma_url=GAMMA, max_markets=50, page_size=2, order=None)
    assert api.gamma_pages() == [(0, 2), (2, 2), (4, 2)]
    assert [m.market_id for m in listing.markets] == [m["id"] for m in OPEN]
    assert (listing.pages, listing.errors) == (3, [])
    assert api.calls[0][1] == {"active": "true", "closed": "false", "limit": 2, "offset": 0}


def test_a_full_last_page_costs_one_empty_page() -> None:
    api = RecordedApi(markets=OPEN[:4])
    listing = fetch_markets(api, gamma_url=GAMMA, max_markets=50, page_size=2, order=None)
    assert api.gamma_pages() == [(0, 2), (2, 2), (4, 2)]
    assert len(listing.markets) == 4


def test_the_market_cap_stops_paging_and_shrinks_the_last_page() -> None:
    api = RecordedApi()
    listing = fetch_markets(api, gamma_url=GAMMA, max_markets=3, page_size=2, order="volume24hr")
    assert api.gamma_pages() == [(0, 2), (2, 1)]
    assert len(listing.markets) == 3
    assert {(p["order"], p["ascending"]) for _, p in api.calls} == {("volume24hr", "false")}


def test_a_failed_page_keeps_the_markets_already_listed() -> None:
    api = RecordedApi()
    url = f"{GAMMA}/markets"
    api.failing[url, "2"] = error_entry(url, "http_status", "HTTP 502")
    listing = fetch_markets(api, gamma_url=GAMMA, max_markets=50, page_size=2, order=None)
    assert len(listing.markets) == 2
    assert listing.errors == [
        {"source": f"{GAMMA}/markets", "kind": "http_status", "error": "HTTP 502", "offset": 2}
    ]


def test_an_undecodable_market_is_reported_and_the_rest_listed() -> None:
    broken = {**OPEN[1], "clobTokenIds": '["only-one"]'}
    api = RecordedApi(markets=[OPEN[0], broken, *OPEN[2:]])
    listing = fetch_markets(api, gamma_url=GAMMA, max_markets=50, page_size=100, order=None)
    assert len(listing.markets) == len(OPEN) - 1
    (error,) = listing.errors
    assert (error["kind"], error["market_id"]) == ("bad_market", broken["id"])


# -- records ------------------------------------------------------------------------------


def test_one_record_per_token_per_hourly_point_keyed_by_market() -> None:
    batch = producer(RecordedApi(), max_markets=1).poll(log=quiet_log())
    yes, no = tokens("253591")
    assert len(batch.records) == 12
    assert batch.fetched == 12
    assert {r["key"] for r in batch.records} == {"253591"}
    assert {r["topic"] for r in batch.records} == {"polymarket.price_hourly"}
    assert batch.records[5]["value"] == {
        "market_id": "253591",
        "token_id": yes,
        "outcome": "Yes",
        "question": "Will the Fed cut rates in June 2024?",
        "price": 0.18,
        "ts": "2024-05-01T12:00:00Z",
        "source": SOURCE_HISTORY,
    }
    assert [r["value"]["ts"] for r in batch.records if r["value"]["token_id"] == no] == [
        f"2024-05-01T{hour:02d}:00:00Z" for hour in range(7, 13)
    ]


def test_the_next_run_sends_only_points_newer_than_the_last_sent() -> None:
    api = RecordedApi()
    prices = producer(api, max_markets=1)
    prices.poll(log=quiet_log()).commit()
    yes, no = tokens("253591")
    for token, price in ((yes, 0.19), (no, 0.81)):
        api.history[token] = [*HISTORY[token], {"t": 1714568400, "p": price}]
    batch = prices.poll(log=quiet_log())
    assert [(r["value"]["outcome"], r["value"]["price"], r["value"]["ts"])
            for r in batch.records] == [
        ("Yes", 0.19, "2024-05-01T13:00:00Z"), ("No", 0.81, "2024-05-01T13:00:00Z"),
    ]
    assert (batch.fetched, batch.skipped_duplicates) == (14, 12)


def test_points_are_not_remembered_until_commit() -> None:
    prices = producer(RecordedApi(), max_markets=1)
    prices.poll(log=quiet_log())
    assert len(prices.poll(log=quiet_log()).records) == 12


def test_a_token_without_trades_gets_the_gamma_price_at_the_current_hour() -> None:
    api = RecordedApi(markets=[market("254310")])
    prices = producer(api)
    batch = prices.poll(log=quiet_log())
    assert [(r["value"]["outcome"], r["value"]["price"], r["value"]["ts"], r["value"]["source"])
            for r in batch.records] == [
        ("Yes", 0.27, "2024-05-01T12:00:00Z", SOURCE_GAMMA),
        ("No", 0.73, "2024-05-01T12:00:00Z", SOURCE_GAMMA),
    ]
    batch.commit()
    again = prices.poll(log=quiet_log())  # same hour: already sent
    assert (again.records, again.skipped_duplicates) == ([], 2)


def test_a_failing_token_is_reported_and_the_others_are_sent() -> None:
    api = RecordedApi()
    yes, _ = tokens("253612")
    url = f"{CLOB}/prices-history"
    api.failing[url, yes] = error_entry(url, "timeout", "ReadTimeout")
    batch = producer(api, max_markets=3).poll(log=quiet_log())
    assert batch.errors == [{"source": url, "kind": "timeout", "error": "ReadTimeout",
                             "token_id": yes}]
    assert len(batch.records) == 5 * 6
    assert yes not in {r["value"]["token_id"] for r in batch.records}


def test_the_market_cap_bounds_the_records() -> None:
    batch = producer(RecordedApi(), max_markets=2, page_size=1).poll(log=quiet_log())
    assert {r["key"] for r in batch.records} == {"253591", "253612"}


# -- configuration ------------------------------------------------------------------------


def test_configuration_defaults_and_overrides() -> None:
    default = PolymarketConfig.from_env({})
    assert (default.gamma_url, default.clob_url) == (
        "https://gamma-api.polymarket.com", "https://clob.polymarket.com",
    )
    assert (default.topic, default.max_markets, default.history_interval, default.order) == (
        "polymarket.price_hourly", 50, "6h", "volume24hr",
    )
    config = PolymarketConfig.from_env({
        "POLYMARKET_GAMMA_URL": "http://127.0.0.1:9000/gamma/",
        "POLYMARKET_CLOB_URL": "http://127.0.0.1:9000/clob",
        "POLYMARKET_MAX_MARKETS": "7",
        "POLYMARKET_PAGE_SIZE": "3",
        "POLYMARKET_ORDER": "none",
        "POLYMARKET_HISTORY_INTERVAL": "1d",
        "POLYMARKET_CONNECT_TIMEOUT_S": "1",
        "RELAY_WAIT_DELIVERED": "yes",
    })
    assert config.gamma_url == "http://127.0.0.1:9000/gamma"
    assert (config.max_markets, config.page_size, config.order) == (7, 3, None)
    assert (config.history_interval, config.http.timeout, config.wait_delivered) == (
        "1d", (1.0, 10.0), True,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"POLYMARKET_HISTORY_INTERVAL": "2h"}, "POLYMARKET_HISTORY_INTERVAL='2h'.*1h, 6h"),
        ({"POLYMARKET_MAX_MARKETS": "0"}, "POLYMARKET_MAX_MARKETS=0 is out of range"),
        ({"POLYMARKET_PAGE_SIZE": "ten"}, "POLYMARKET_PAGE_SIZE='ten' is not a whole number"),
        ({"POLYMARKET_GAMMA_URL": "gamma-api.polymarket.com"}, "POLYMARKET_GAMMA_URL holds"),
        ({"POLYMARKET_BACKOFF_S": "-1"}, "POLYMARKET_BACKOFF_S=-1 is out of range"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        PolymarketConfig.from_env(env)


def test_a_point_not_handed_over_is_sent_again_with_the_newer_points_of_its_token() -> None:
    prices = producer(RecordedApi(), max_markets=1)
    batch = prices.poll(log=quiet_log())
    yes, _no = tokens("253591")
    hours = [r["value"]["ts"] for r in batch.records if r["value"]["token_id"] == yes]
    lost = hours[3]
    batch.commit([not (r["value"]["token_id"] == yes and r["value"]["ts"] == lost)
                  for r in batch.records])
    again = prices.poll(log=quiet_log())
    assert [r["value"]["ts"] for r in again.records] == hours[3:]
    assert {r["value"]["token_id"] for r in again.records} == {yes}
