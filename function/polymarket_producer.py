"""Lambda handler ``polymarket_producer.handler``: hourly prices to ``polymarket.price_hourly``.

Thin glue: configuration, session and the per-token "last point sent" state are built once
per execution environment; each invocation reads markets and prices (``polymarket_prices``)
and hands the records to the kafka-relay extension. No Kafka client lives here.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from kafka_relay import client
from polymarket_prices import PolymarketConfig, PolymarketProducer
from producer_common import run_invocation

LOGGER = "polymarket_producer"


@functools.cache
def _producer() -> PolymarketProducer:
    return PolymarketProducer(PolymarketConfig.from_env(os.environ))


@client.relay_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    producer = _producer()
    return run_invocation(
        producer.poll, context, logger=LOGGER, send=client.send,
        wait=producer.config.wait_delivered,
    )
