"""Price and feed records for the views tests: the producers' value shapes, as Kafka records."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from views_event import KafkaRecord

PRICE_TOPIC = "polymarket.price_hourly"
RSS_TOPIC = "rss.events"
BASE = datetime(2026, 11, 28, 8, tzinfo=timezone.utc)


def price_value(market: str, token: str, price: float, ts: datetime,
                outcome: str = "Yes") -> dict[str, Any]:
    return {"market_id": market, "token_id": token, "outcome": outcome,
            "question": f"Will market {market} resolve?", "price": price,
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "source": "clob.prices-history"}


def feed_value(source: str, guid: str, fetched: datetime) -> dict[str, Any]:
    return {"source": source, "guid": guid, "title": guid, "link": guid,
            "published_at": None, "summary": "", "fetched_at": fetched.isoformat()}


def record(topic: str, partition: int, offset: int, value: Any, *, relay_id: str,
           key: str = "k", produced: datetime | None = None) -> KafkaRecord:
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    moment = produced or BASE
    return KafkaRecord(topic, partition, offset, int(moment.timestamp() * 1000),
                       "CREATE_TIME", key.encode(), body, (("x-relay-id", relay_id.encode()),))


def scenario(seed: int, *, markets: int = 3, hours: int = 5) -> list[KafkaRecord]:
    """Hourly prices for a few markets (two outcomes each) and feed items over ``hours``,
    as the relay would leave them on the topics: 2 partitions each, some records produced
    twice (same x-relay-id, new offset), a cold-start resend of a window (new x-relay-id,
    same token and ts), a poison record, then shuffled (out of order across partitions)."""
    rng = random.Random(seed)
    out: list[KafkaRecord] = []
    offsets = {(PRICE_TOPIC, 0): 0, (PRICE_TOPIC, 1): 0, (RSS_TOPIC, 0): 0, (RSS_TOPIC, 1): 0}

    def add(topic: str, partition: int, value: Any, relay_id: str, produced: datetime) -> None:
        offset = offsets[(topic, partition)]
        offsets[(topic, partition)] += 1
        out.append(record(topic, partition, offset, value, relay_id=relay_id,
                          produced=produced))

    n = 0
    for hour in range(hours):
        moment = BASE + timedelta(hours=hour)
        for market in range(markets):
            for outcome in ("Yes", "No"):
                for minute in (0, 20, 40):
                    ts = moment + timedelta(minutes=minute)
                    price = round(rng.uniform(0.01, 0.99), rng.choice([2, 3, 4]))
                    value = price_value(str(1000 + market), f"tok-{market}-{outcome}", price,
                                        ts, outcome)
                    n += 1
                    add(PRICE_TOPIC, market % 2, value, f"rid-{n}", ts + timedelta(minutes=1))
                    if rng.random() < 0.2:  # the relay produced it twice
                        add(PRICE_TOPIC, market % 2, value, f"rid-{n}",
                            ts + timedelta(minutes=2))
                    if rng.random() < 0.1:  # a cold start resends it under a new id
                        add(PRICE_TOPIC, market % 2, value, f"resend-{n}",
                            ts + timedelta(hours=2))
        for item in range(rng.randint(1, 4)):
            source = f"https://feed{item % 2}.example/rss"
            n += 1
            value = feed_value(source, f"guid-{hour}-{item}", moment + timedelta(minutes=5))
            add(RSS_TOPIC, item % 2, value, f"rid-{n}", moment + timedelta(minutes=5))
            if rng.random() < 0.3:
                add(RSS_TOPIC, item % 2, value, f"rid-{n}", moment + timedelta(minutes=6))
    add(PRICE_TOPIC, 0, b"\xff not json", "poison-1", BASE)
    add(PRICE_TOPIC, 1, {"market_id": "1000", "price": 0.5}, "poison-2", BASE)
    rng.shuffle(out)
    return out


def redelivered(records: list[KafkaRecord], seed: int) -> list[KafkaRecord]:
    """The same records plus redeliveries of some (same topic-partition-offset)."""
    rng = random.Random(seed)
    again = [replace(r) for r in records if rng.random() < 0.25]
    return records + again
