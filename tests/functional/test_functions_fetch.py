"""The producer functions over real HTTP: the fixture server on 127.0.0.1, real retries and
timeouts, and (marked integration) the handlers handing records to a real relay and broker."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polymarket_producer
import pytest
import requests
import rss_producer
from awslambdaric.lambda_context import LambdaContext

from devtools.fixture_server import FIXTURES, FixtureServer
from devtools.kafka_broker import free_port
from kafka_relay import client
from polymarket_prices import PolymarketConfig, PolymarketProducer
from producer_common import HttpSettings, JsonLog, retrying_session
from rss_feed import RssConfig, RssProducer, Validators, fetch_feed
from tests.conftest import Broker
from tests.relay_harness import TOKEN, running_relay

WORLD = "/rss/world_news_rss2.xml"
ATOM = "/rss/markets_atom.xml"
FAST = HttpSettings(connect_timeout_s=1.0, read_timeout_s=2.0, max_retries=3, backoff_s=0.01)


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    with FixtureServer() as fixtures:
        yield fixtures


def rss(
    server: FixtureServer, *paths: str, http: HttpSettings = FAST, **config: Any
) -> RssProducer:
    urls = tuple(server.url + path for path in paths)
    return RssProducer(RssConfig(feed_urls=urls, http=http, **config))


def log() -> JsonLog:
    return JsonLog("test", stream=io.StringIO())


def statuses(server: FixtureServer, path: str) -> list[int]:
    return [hit.status for hit in server.hits(path)]


# -- RSS ----------------------------------------------------------------------------------


def test_second_fetch_of_an_unchanged_feed_is_a_304_and_yields_no_records(
    server: FixtureServer,
) -> None:
    feeds = rss(server, WORLD, ATOM)
    first = feeds.poll(log=log())
    first.commit()
    second = feeds.poll(log=log())
    assert (len(first.records), second.records, second.fetched) == (6, [], 0)
    assert statuses(server, WORLD) == [200, 304]
    assert "If-None-Match" not in server.hits(WORLD)[0].headers
    conditional = server.hits(WORLD)[1].headers
    served = requests.get(server.url + WORLD, timeout=5).headers
    assert conditional["If-None-Match"] == served["ETag"]
    assert conditional["If-Modified-Since"] == "Wed, 01 May 2024 12:05:00 GMT"


def test_last_modified_alone_also_earns_a_304(server: FixtureServer) -> None:
    response = fetch_feed(
        retrying_session(FAST), server.url + ATOM,
        validators=Validators(last_modified="Wed, 01 May 2024 12:05:00 GMT"),
        timeout=FAST.timeout, max_bytes=1 << 20,
    )
    assert response.not_modified
    assert response.error is None


def test_a_changed_feed_is_fetched_again_and_only_its_new_entry_sent(
    server: FixtureServer,
) -> None:
    feeds = rss(server, WORLD)
    feeds.poll(log=log()).commit()
    body = (FIXTURES / "rss" / "world_news_rss2.xml").read_bytes()
    server.put(WORLD, body.replace(b"<item>", (
        b'<item><title>Port strike ends</title><guid isPermaLink="false">example-wire-88600'
        b"</guid><pubDate>Wed, 01 May 2024 15:00:00 -0400</pubDate></item><item>"
    ), 1))
    batch = feeds.poll(log=log())
    assert statuses(server, WORLD) == [200, 200]
    assert [(r["key"], r["value"]["published_at"]) for r in batch.records] == [
        ("example-wire-88600", "2024-05-01T19:00:00Z")
    ]


def test_server_errors_are_retried_until_the_feed_answers(server: FixtureServer) -> None:
    server.fault(WORLD, status=503, times=2)
    batch = rss(server, WORLD).poll(log=log())
    assert statuses(server, WORLD) == [503, 503, 200]
    assert (len(batch.records), batch.errors) == (3, [])


def test_retries_are_bounded_and_the_last_status_is_reported(server: FixtureServer) -> None:
    server.fault(WORLD, status=500, times=None)
    http = HttpSettings(read_timeout_s=2.0, max_retries=2, backoff_s=0.01)
    batch = rss(server, WORLD, ATOM, http=http).poll(log=log())
    assert statuses(server, WORLD) == [500, 500, 500]
    assert [(e["kind"], e["status"]) for e in batch.errors] == [("http_status", 500)]
    assert len(batch.records) == 3  # the Atom feed still went through


def test_429_waits_for_retry_after_before_asking_again(server: FixtureServer) -> None:
    server.fault(ATOM, status=429, retry_after="1")
    no_backoff = HttpSettings(read_timeout_s=2.0, backoff_s=0.0)
    batch = rss(server, ATOM, http=no_backoff).poll(log=log())
    first, second = server.hits(ATOM)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95
    assert len(batch.records) == 3


def test_a_long_retry_after_is_capped(server: FixtureServer) -> None:
    server.fault(ATOM, status=503, retry_after="3600")
    capped = HttpSettings(read_timeout_s=2.0, backoff_s=0.0, retry_after_max_s=1)
    batch = rss(server, ATOM, http=capped).poll(log=log())
    assert statuses(server, ATOM) == [503, 200]
    first, second = server.hits(ATOM)
    assert second.at - first.at < 60  # waited the 1 s cap, not the hour the server asked for
    assert batch.errors == []


def test_a_timeout_on_one_feed_is_reported_while_the_others_succeed(
    server: FixtureServer,
) -> None:
    server.fault(WORLD, delay_s=5)  # a retry would be answered at once: an error proves none
    slow = HttpSettings(connect_timeout_s=1.0, read_timeout_s=0.3, max_retries=3, backoff_s=0.01)
    batch = rss(server, WORLD, ATOM, "/rss/no_guids_rss2.xml", http=slow).poll(log=log())
    assert [(e["source"], e["kind"]) for e in batch.errors] == [(server.url + WORLD, "timeout")]
    assert {r["value"]["source"] for r in batch.records} == {
        server.url + ATOM, server.url + "/rss/no_guids_rss2.xml",
    }


def test_malformed_missing_and_oversized_feeds_are_reported_each(server: FixtureServer) -> None:
    server.fault(ATOM, body=b"<rss><channel><title>cut &amp off <<<")
    batch = rss(server, WORLD, ATOM, "/rss/gone.xml", "/rss/timezones_rss2.xml",
                max_feed_bytes=2048).poll(log=log())
    assert [(e["source"].removeprefix(server.url), e["kind"]) for e in batch.errors] == [
        (WORLD, "too_large"), (ATOM, "malformed"), ("/rss/gone.xml", "http_status"),
    ]
    assert len(batch.records) == 7  # timezones_rss2.xml is small enough


def test_a_refused_connection_is_reported(server: FixtureServer) -> None:
    gone = RssProducer(RssConfig(
        feed_urls=("http://127.0.0.1:9/feed.xml",),
        http=HttpSettings(connect_timeout_s=0.5, max_retries=1, backoff_s=0.01),
    ))
    (error,) = gone.poll(log=log()).errors
    assert error["kind"] == "connection"


# -- Polymarket ---------------------------------------------------------------------------


def polymarket(server: FixtureServer, **config: Any) -> PolymarketProducer:
    return PolymarketProducer(PolymarketConfig(
        gamma_url=server.gamma_url, clob_url=server.clob_url, http=FAST, **config
    ))


def test_gamma_pages_are_followed_over_http_and_every_token_priced(
    server: FixtureServer,
) -> None:
    server.fault("/gamma/markets", status=502, query={"offset": "2"})  # once, then retried
    batch = polymarket(server, page_size=2).poll(log=log())
    pages = [(h.query["offset"], h.query["limit"], h.status) for h in server.hits("/gamma/markets")]
    assert pages == [("0", "2", 200), ("2", "2", 502), ("2", "2", 200), ("4", "2", 200)]
    assert server.hits("/gamma/markets")[0].query["closed"] == "false"
    assert len(server.hits("/clob/prices-history")) == 10  # 5 open markets, 2 tokens each
    assert {h.query["fidelity"] for h in server.hits("/clob/prices-history")} == {"60"}
    # highest 24 h volume first; 4 markets x 2 tokens x 6 hours + 2 Gamma prices
    assert [r["key"] for r in batch.records][:1] == ["253591"]
    assert (len(batch.records), batch.errors) == (50, [])


def test_a_token_whose_history_keeps_failing_is_reported(server: FixtureServer) -> None:
    fixtures = FIXTURES / "polymarket" / "markets.json"
    token = json.loads(json.loads(fixtures.read_text())[0]["clobTokenIds"])[0]
    server.fault("/clob/prices-history", status=500, times=None, query={"market": token})
    batch = polymarket(server, max_markets=1).poll(log=log())
    assert [(e["kind"], e["status"], e["token_id"]) for e in batch.errors] == [
        ("http_status", 500, token)
    ]
    assert len(batch.records) == 6  # the other outcome's hours


def test_a_malformed_gamma_page_is_reported(server: FixtureServer) -> None:
    server.fault("/gamma/markets", body=b'{"error": "maintenance"}')
    batch = polymarket(server).poll(log=log())
    assert batch.records == []
    assert [e["kind"] for e in batch.errors] == ["malformed"]


# -- handlers against a real relay and broker ---------------------------------------------


def context(request_id: str) -> LambdaContext:
    deadline_ms = int(time.time() * 1000) + 60_000
    return LambdaContext(request_id, None, None, deadline_ms)


@pytest.fixture
def relay_env(
    monkeypatch: pytest.MonkeyPatch, server: FixtureServer, broker: Broker, tmp_path: Path
) -> Iterator[str]:
    """A relay on a fresh topic, and the handlers' environment pointing at it and the server."""
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as relay:
        for name, value in {
            **server.env(),
            "KAFKA_TOPIC": topic,
            "KAFKA_RELAY_PORT": str(relay.config.port),
            "KAFKA_RELAY_TOKEN": TOKEN,
            "RELAY_WAIT_DELIVERED": "true",
            "POLYMARKET_MAX_MARKETS": "2",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(client, "_default", None)
        rss_producer._producer.cache_clear()
        polymarket_producer._producer.cache_clear()
        try:
            yield topic
        finally:
            client.default_client().close()
            rss_producer._producer.cache_clear()
            polymarket_producer._producer.cache_clear()


@pytest.mark.integration
def test_rss_handler_delivers_new_entries_keyed_by_guid_once(
    relay_env: str, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    first = rss_producer.handler({}, context("req-1"))
    second = rss_producer.handler({}, context("req-2"))
    assert first == {
        "fetched": 18, "sent": 17, "failed": 0, "skipped_duplicates": 1, "errors": [],
        "delivered": 17, "dead_lettered": 0, "spilled": 0, "pending": 0,
    }
    assert (second["sent"], second["fetched"]) == (0, 0)  # all four feeds answered 304
    records = broker.read(relay_env, expected=17)
    keys = {r.key for r in records}
    assert b"example-wire-88412" in keys
    assert b"tag:markets.example.org,2024:yields" in keys
    value = json.loads(next(r.value for r in records if r.key == b"briefing-ny-1") or b"{}")
    assert value["published_at"] == "2024-05-01T13:30:00Z"
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                 if '"run.summary"' in line]
    assert [(s["request_id"], s["sent"]) for s in summaries] == [("req-1", 17), ("req-2", 0)]


@pytest.mark.integration
def test_polymarket_handler_delivers_hourly_prices_keyed_by_market(
    relay_env: str, broker: Broker
) -> None:
    summary = polymarket_producer.handler({}, context("req-3"))
    assert (summary["sent"], summary["delivered"], summary["errors"]) == (24, 24, [])
    records = broker.read(relay_env, expected=24)
    assert {r.key for r in records} == {b"253591", b"253612"}
    value = json.loads(records[0].value or b"{}")
    assert set(value) == {"market_id", "token_id", "outcome", "question", "price", "ts", "source"}
    assert polymarket_producer.handler({}, context("req-4"))["skipped_duplicates"] == 24


@pytest.mark.integration
def test_with_the_direct_fallback_and_kafka_unreachable_nothing_is_remembered(
    monkeypatch: pytest.MonkeyPatch, server: FixtureServer
) -> None:
    """No extension, KAFKA_RELAY_FALLBACK=direct, and a broker port nobody listens on."""
    for name, value in {
        **server.env(),
        "KAFKA_TOPIC": "rss.events",
        "KAFKA_RELAY_PORT": str(free_port()),
        "KAFKA_RELAY_FALLBACK": "direct",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(client, "_default", None)
    rss_producer._producer.cache_clear()
    try:
        def short(request_id: str) -> LambdaContext:
            return LambdaContext(request_id, None, None, int(time.time() * 1000) + 4_000)

        first = rss_producer.handler({}, short("req-5"))
        second = rss_producer.handler({}, short("req-6"))
    finally:
        client.default_client().close()
        rss_producer._producer.cache_clear()
    assert (first["sent"], first["failed"], first["fetched"]) == (0, 17, 18)
    assert [e["kind"] for e in first["errors"]] == ["not_delivered"]
    # nothing was remembered: no 304s, no skipped entries, the same 17 are sent again
    assert (second["sent"], second["failed"], second["fetched"]) == (0, 17, 18)
