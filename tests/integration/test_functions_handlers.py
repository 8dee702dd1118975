"""The producer functions' handlers handing records to a real relay and broker, and what
they remember when Kafka cannot be reached."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import polymarket_producer
import pytest
import rss_producer
from awslambdaric.lambda_context import LambdaContext

from devtools.fixture_server import FixtureServer
from devtools.kafka_broker import free_port
from kafka_relay import client
from tests.conftest import Broker
from tests.relay_harness import TOKEN, running_relay


def context(request_id: str) -> LambdaContext:
    deadline_ms = int(time.time() * 1000) + 60_000
    return LambdaContext(request_id, None, None, deadline_ms)


@pytest.fixture
def relay_env(
    monkeypatch: pytest.MonkeyPatch, upstream: FixtureServer, broker: Broker, tmp_path: Path
) -> Iterator[str]:
    """A relay on a fresh topic, and the handlers' environment pointing at it and the upstream."""
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as relay:
        for name, value in {
            **upstream.env(),
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


def test_with_the_direct_fallback_and_kafka_unreachable_nothing_is_remembered(
    monkeypatch: pytest.MonkeyPatch, upstream: FixtureServer
) -> None:
    """No extension, KAFKA_RELAY_FALLBACK=direct, and a broker port nobody listens on."""
    for name, value in {
        **upstream.env(),
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
