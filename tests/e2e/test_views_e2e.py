"""Prices produced through the relay -> local broker -> event source poller -> the views
functions in the sandbox -> DynamoDB and S3 on moto -> served answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import Producer

from devtools.fixture_server import FixtureServer
from devtools.kafka_broker import free_port
from devtools.moto_server import MotoServer, use_moto
from devtools.sandbox import Sandbox
from devtools.views_demo import BUCKET, TABLE, run_views
from tests.conftest import Artifacts, Broker


def _produce_prices(artifacts: Artifacts, broker: Broker, topic: str) -> None:
    """Two cold starts of the Polymarket producer: the second resends the whole window
    under new x-relay-ids, which the views must not count twice."""
    with FixtureServer() as upstream:
        for cold_start in range(2):
            with Sandbox(layers=[artifacts.layer], function=artifacts.functions,
                         handler="polymarket_producer.handler",
                         env={**upstream.env(), "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                              "KAFKA_TOPIC": topic, "KAFKA_RELAY_PORT": str(free_port()),
                              "RELAY_WAIT_DELIVERED": "true"},
                         function_name=f"polymarket-{cold_start}", timeout_s=30.0) as sandbox:
                result = sandbox.invoke({"source": "aws.events"})
                assert result.status == "success", result.error
                assert result.payload["delivered"] > 0
                sandbox.shutdown("spindown")


def test_relayed_prices_become_views_that_both_layers_agree_on(
    artifacts: Artifacts, views_functions: Path, broker: Broker, moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_moto(moto, monkeypatch)
    prices, feeds = broker.create_topic(partitions=2), broker.create_topic()
    _produce_prices(artifacts, broker, prices)
    poison = Producer({"bootstrap.servers": broker.bootstrap})
    poison.produce(prices, key=b"x", value=b"\xff not a price")
    assert poison.flush(10) == 0
    on_topic = broker.read(prices)
    points = {(v["token_id"], v["ts"]) for v in
              (json.loads(r.value or b"") for r in on_topic if r.value != b"\xff not a price")}
    assert len(on_topic) > len(points) + 1  # the resend doubled the window

    run = run_views(broker.bootstrap, views_functions, moto, topics=(prices, feeds),
                    markets=2)

    assert run.problems == []
    assert run.stats["views-speed"].records == len(on_topic)
    assert run.stats["views-speed"].to_destination == 0
    ddb, s3 = moto.client("dynamodb"), moto.client("s3")
    counted = sum(int(item["count"]["N"]) for item in ddb.scan(TableName=TABLE)["Items"]
                  if item["pk"]["S"].startswith("market#"))
    assert counted == len(points)
    quarantined = s3.list_objects_v2(Bucket=BUCKET, Prefix="failures/poison/")
    assert quarantined["KeyCount"] == 1  # both consumers put it under one deterministic key
    assert len(run.answers) == 4
    assert all(answer["outcomes"] for answer in run.answers)
    assert {answer["source"] for answer in run.answers} == {"batch"}  # recorded 2024 prices
