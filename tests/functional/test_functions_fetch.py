"""The producer functions over real HTTP: the fixture server on 127.0.0.1, real retries and
timeouts."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import requests

from devtools.fixture_server import FIXTURES, FixtureServer
from polymarket_prices import PolymarketConfig, PolymarketProducer
from producer_common import Deadline, HttpSettings, JsonLog, retrying_session
from rss_feed import RssConfig, RssProducer, Validators, fetch_feed

WORLD = "/rss/world_news_rss2.xml"
ATOM = "/rss/markets_atom.xml"
FAST = HttpSettings(connect_timeout_s=1.0, read_timeout_s=2.0, max_retries=3, backoff_s=0.01)


def rss(
    upstream: FixtureServer, *paths: str, http: HttpSettings = FAST, **config: Any
) -> RssProducer:
    urls = tuple(upstream.url + path for path in paths)
    return RssProducer(RssConfig(feed_urls=urls, http=http, **config))


def log() -> JsonLog:
    return JsonLog("test", stream=io.StringIO())


def statuses(upstream: FixtureServer, path: str) -> list[int]:
    return [hit.status for hit in upstream.hits(path)]


# -- RSS ----------------------------------------------------------------------------------


def test_second_fetch_of_an_unchanged_feed_is_a_304_and_yields_no_records(
    upstream: FixtureServer,
) -> None:
    feeds = rss(upstream, WORLD, ATOM)
    first = feeds.poll(log=log())
    first.commit()
    second = feeds.poll(log=log())
    assert (len(first.records), second.records, second.fetched) == (6, [], 0)
    assert statuses(upstream, WORLD) == [200, 304]
    assert "If-None-Match" not in upstream.hits(WORLD)[0].headers
    conditional = upstream.hits(WORLD)[1].headers
    served = requests.get(upstream.url + WORLD, timeout=5).headers
    assert conditional["If-None-Match"] == served["ETag"]
    assert conditional["If-Modified-Since"] == "Wed, 01 May 2024 12:05:00 GMT"


def test_last_modified_alone_also_earns_a_304(upstream: FixtureServer) -> None:
    response = fetch_feed(
        retrying_session(FAST), upstream.url + ATOM,
        validators=Validators(last_modified="Wed, 01 May 2024 12:05:00 GMT"),
        settings=FAST, max_bytes=1 << 20,
    )
    assert response.not_modified
    assert response.error is None


def test_a_changed_feed_is_fetched_again_and_only_its_new_entry_sent(
    upstream: FixtureServer,
) -> None:
    feeds = rss(upstream, WORLD)
    feeds.poll(log=log()).commit()
    body = (FIXTURES / "rss" / "world_news_rss2.xml").read_bytes()
    upstream.put(WORLD, body.replace(b"<item>", (
        b'<item><title>Port strike ends</title><guid isPermaLink="false">example-wire-88600'
        b"</guid><pubDate>Wed, 01 May 2024 15:00:00 -0400</pubDate></item><item>"
    ), 1))
    batch = feeds.poll(log=log())
    assert statuses(upstream, WORLD) == [200, 200]
    assert [(r["key"], r["value"]["published_at"]) for r in batch.records] == [
        ("example-wire-88600", "2024-05-01T19:00:00Z")
    ]


def test_server_errors_are_retried_until_the_feed_answers(upstream: FixtureServer) -> None:
    upstream.fault(WORLD, status=503, times=2)
    batch = rss(upstream, WORLD).poll(log=log())
    assert statuses(upstream, WORLD) == [503, 503, 200]
    assert (len(batch.records), batch.errors) == (3, [])


def test_retries_are_bounded_and_the_last_status_is_reported(upstream: FixtureServer) -> None:
    upstream.fault(WORLD, status=500, times=None)
    http = HttpSettings(read_timeout_s=2.0, max_retries=2, backoff_s=0.01)
    batch = rss(upstream, WORLD, ATOM, http=http).poll(log=log())
    assert statuses(upstream, WORLD) == [500, 500, 500]
    assert [(e["kind"], e["status"]) for e in batch.errors] == [("http_status", 500)]
    assert len(batch.records) == 3  # the Atom feed still went through


def test_429_waits_for_retry_after_before_asking_again(upstream: FixtureServer) -> None:
    upstream.fault(ATOM, status=429, retry_after="1")
    no_backoff = HttpSettings(read_timeout_s=2.0, backoff_s=0.0)
    batch = rss(upstream, ATOM, http=no_backoff).poll(log=log())
    first, second = upstream.hits(ATOM)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95
    assert len(batch.records) == 3


def test_a_long_retry_after_is_capped(upstream: FixtureServer) -> None:
    upstream.fault(ATOM, status=503, retry_after="3600")
    capped = HttpSettings(read_timeout_s=2.0, backoff_s=0.0, retry_after_max_s=1)
    batch = rss(upstream, ATOM, http=capped).poll(log=log())
    assert statuses(upstream, ATOM) == [503, 200]
    first, second = upstream.hits(ATOM)
    # waited the 1 s cap; the hour the server asked for would end in the suite's timeout
    assert second.at - first.at >= 0.95
    assert batch.errors == []


def test_a_timeout_on_one_feed_is_reported_while_the_others_succeed(
    upstream: FixtureServer,
) -> None:
    upstream.fault(WORLD, delay_s=5)  # a retry would be answered at once: an error proves none
    slow = HttpSettings(connect_timeout_s=1.0, read_timeout_s=0.3, max_retries=3, backoff_s=0.01)
    batch = rss(upstream, WORLD, ATOM, "/rss/no_guids_rss2.xml", http=slow).poll(log=log())
    assert [(e["source"], e["kind"]) for e in batch.errors] == [(upstream.url + WORLD, "timeout")]
    assert {r["value"]["source"] for r in batch.records} == {
        upstream.url + ATOM, upstream.url + "/rss/no_guids_rss2.xml",
    }


def test_malformed_missing_and_oversized_feeds_are_reported_each(upstream: FixtureServer) -> None:
    upstream.fault(ATOM, body=b"<rss><channel><title>cut &amp off <<<")
    batch = rss(upstream, WORLD, ATOM, "/rss/gone.xml", "/rss/timezones_rss2.xml",
                max_feed_bytes=2048).poll(log=log())
    assert [(e["source"].removeprefix(upstream.url), e["kind"]) for e in batch.errors] == [
        (WORLD, "too_large"), (ATOM, "malformed"), ("/rss/gone.xml", "http_status"),
    ]
    assert len(batch.records) == 7  # timezones_rss2.xml is small enough


def test_a_slow_drip_feed_ends_at_the_invocations_deadline_and_the_others_are_read(
    upstream: FixtureServer,
) -> None:
    upstream.fault(WORLD, drip_s=0.25)  # a byte every 0.25 s: each read is quick, the body never
    started = time.monotonic()
    deadline = Deadline(started + 1.0)  # four drips in: well short of the body's end
    batch = rss(upstream, ATOM, WORLD, "/rss/no_guids_rss2.xml").poll(log=log(), deadline=deadline)
    took = time.monotonic() - started
    assert took < 2.0, f"the run went {took - 1.0:.1f} s past its deadline"
    assert (upstream.url + WORLD, "deadline") in [(e["source"], e["kind"]) for e in batch.errors]
    assert {r["value"]["source"] for r in batch.records} >= {upstream.url + ATOM}


def test_a_slow_drip_gets_its_own_body_timeout_without_an_invocation(
    upstream: FixtureServer,
) -> None:
    upstream.fault(WORLD, drip_s=0.25)
    started = time.monotonic()
    patient = HttpSettings(connect_timeout_s=1.0, read_timeout_s=5.0, body_timeout_s=0.5,
                           max_retries=0)
    (error,) = rss(upstream, WORLD, http=patient).poll(log=log()).errors
    assert time.monotonic() - started < 1.5
    assert error["kind"] == "deadline"
    assert "BODY_TIMEOUT_S" in error["error"]


def test_a_refused_connection_is_reported(upstream: FixtureServer) -> None:
    gone = RssProducer(RssConfig(
        feed_urls=("http://127.0.0.1:9/feed.xml",),
        http=HttpSettings(connect_timeout_s=0.5, max_retries=1, backoff_s=0.01),
    ))
    (error,) = gone.poll(log=log()).errors
    assert error["kind"] == "connection"


# -- Polymarket ---------------------------------------------------------------------------


def polymarket(upstream: FixtureServer, **config: Any) -> PolymarketProducer:
    return PolymarketProducer(PolymarketConfig(
        gamma_url=upstream.gamma_url, clob_url=upstream.clob_url, http=FAST, **config
    ))


def test_gamma_pages_are_followed_over_http_and_every_token_priced(
    upstream: FixtureServer,
) -> None:
    upstream.fault("/gamma/markets", status=502, query={"offset": "2"})  # once, then retried
    batch = polymarket(upstream, page_size=2).poll(log=log())
    pages = [(h.query["offset"], h.query["limit"], h.status)
             for h in upstream.hits("/gamma/markets")]
    assert pages == [("0", "2", 200), ("2", "2", 502), ("2", "2", 200), ("4", "2", 200)]
    assert upstream.hits("/gamma/markets")[0].query["closed"] == "false"
    assert len(upstream.hits("/clob/prices-history")) == 10  # 5 open markets, 2 tokens each
    assert {h.query["fidelity"] for h in upstream.hits("/clob/prices-history")} == {"60"}
    # highest 24 h volume first; 4 markets x 2 tokens x 6 hours + 2 Gamma prices
    assert [r["key"] for r in batch.records][:1] == ["253591"]
    assert (len(batch.records), batch.errors) == (50, [])


def test_a_token_whose_history_keeps_failing_is_reported(upstream: FixtureServer) -> None:
    fixtures = FIXTURES / "polymarket" / "markets.json"
    token = json.loads(json.loads(fixtures.read_text())[0]["clobTokenIds"])[0]
    upstream.fault("/clob/prices-history", status=500, times=None, query={"market": token})
    batch = polymarket(upstream, max_markets=1).poll(log=log())
    assert [(e["kind"], e["status"], e["token_id"]) for e in batch.errors] == [
        ("http_status", 500, token)
    ]
    assert len(batch.records) == 6  # the other outcome's hours


def test_a_dripping_gamma_page_ends_at_the_deadline(upstream: FixtureServer) -> None:
    upstream.fault("/gamma/markets", drip_s=0.25)
    started = time.monotonic()
    batch = polymarket(upstream).poll(log=log(), deadline=Deadline(started + 0.75))
    assert time.monotonic() - started < 1.75
    assert [e["kind"] for e in batch.errors] == ["deadline"]
    assert batch.records == []


def test_a_malformed_gamma_page_is_reported(upstream: FixtureServer) -> None:
    upstream.fault("/gamma/markets", body=b'{"error": "maintenance"}')
    batch = polymarket(upstream).poll(log=log())
    assert batch.records == []
    assert [e["kind"] for e in batch.errors] == ["malformed"]
