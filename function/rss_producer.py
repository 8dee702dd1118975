"""Lambda handler ``rss_producer.handler``: new RSS/Atom entries to ``rss.events``.

Thin glue: configuration, session and dedupe state are built once per execution
environment; each invocation polls the feeds (``rss_feed``) and hands the new entries to the
kafka-relay extension. No Kafka client lives here.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from kafka_relay import client
from producer_common import JsonLog, run_invocation
from rss_feed import RssConfig, RssProducer, load_state

LOGGER = "rss_producer"


@functools.cache
def _producer() -> RssProducer:
    config = RssConfig.from_env(os.environ)
    return RssProducer(config, state=load_state(config, JsonLog(LOGGER)))


@client.relay_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    producer = _producer()
    return run_invocation(
        producer.poll, context, logger=LOGGER, send=client.send,
        wait=producer.config.wait_delivered,
    )
