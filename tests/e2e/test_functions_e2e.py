"""Both producer functions, built, in the sandbox with the built layer: every record arrives
on its topic exactly as the function normalised it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from devtools.fixture_server import FixtureServer
from devtools.kafka_broker import ConsumedRecord, free_port
from devtools.sandbox import Sandbox
from polymarket_prices import PolymarketConfig, PolymarketProducer
from producer_common import Batch, JsonLog
from rss_feed import RssConfig, RssProducer
from tests.conftest import Artifacts, Broker


def _comparable(key: str | bytes | None, value: Any) -> tuple[str, str]:
    """A record without its fetch time, which differs between two polls."""
    if isinstance(key, bytes):
        key = key.decode()
    value = dict(value)
    value.pop("fetched_at", None)
    return str(key), json.dumps(value, sort_keys=True)


def _expected(poll: Callable[..., Batch]) -> set[tuple[str, str]]:
    batch = poll(log=JsonLog("expected", stream=io.StringIO()))
    return {_comparable(r["key"], r["value"]) for r in batch.records}


def _arrived(records: list[ConsumedRecord]) -> set[tuple[str, str]]:
    return {_comparable(r.key, json.loads(r.value or b"null")) for r in records}


def _run(artifacts: Artifacts, broker: Broker, handler: str, *, topic: str,
         env: dict[str, str], invocations: int) -> list[dict[str, Any]]:
    with Sandbox(layers=[artifacts.layer], function=artifacts.functions, handler=handler,
                 env={**env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_TOPIC": topic,
                      "KAFKA_RELAY_PORT": str(free_port())},
                 function_name=handler.split(".", maxsplit=1)[0], timeout_s=30.0) as sandbox:
        payloads = []
        for _ in range(invocations):
            result = sandbox.invoke({"source": "aws.events"})
            assert result.status == "success", result.error
            assert isinstance(result.payload, dict)
            payloads.append(result.payload)
        shutdown = sandbox.shutdown("spindown")
    assert shutdown.exit_codes == {"kafka-relay": 0}
    return payloads


def test_rss_entries_arrive_exactly_as_normalised_and_warm_runs_send_nothing_new(
    artifacts: Artifacts, broker: Broker, upstream: FixtureServer
) -> None:
    topic = broker.create_topic()
    payloads = _run(artifacts, broker, "rss_producer.handler", topic=topic,
                    env=upstream.env(), invocations=2)
    expected = _expected(RssProducer(RssConfig.from_env(upstream.env())).poll)
    assert payloads[0]["sent"] == len(expected) > 0
    assert payloads[0]["errors"] == []
    assert payloads[1]["sent"] == 0  # 304s and seen guids: nothing new on the warm run
    records = broker.read(topic, expected=len(expected))
    assert _arrived(records) == expected
    assert len(records) == len(expected)


def test_polymarket_prices_arrive_exactly_as_normalised(
    artifacts: Artifacts, broker: Broker, upstream: FixtureServer
) -> None:
    topic = broker.create_topic()
    env = {**upstream.env(), "RELAY_WAIT_DELIVERED": "true"}
    (payload,) = _run(artifacts, broker, "polymarket_producer.handler", topic=topic, env=env,
                      invocations=1)
    expected = _expected(PolymarketProducer(PolymarketConfig.from_env(upstream.env())).poll)
    assert payload["sent"] == payload["delivered"] == len(expected) > 0
    records = broker.read(topic, expected=len(expected))
    assert _arrived(records) == expected
    assert all(r.headers.get("x-relay-id") for r in records)
