"""A scripted stand-in for confluent-kafka's Producer and a fake clock, for engine unit tests.

The fake keeps what was produced and answers delivery reports only when polled or
flushed, with whatever ``respond`` says for that message (None: delivered).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from kafka_relay.config import Config, load_config
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.delivery.ledger import Limits
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillChain

DeliveryCallback = Callable[[KafkaError | None, Any], None]


@dataclass
class Sent:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: dict[str, bytes]
    timestamp: int

    @property
    def relay_id(self) -> str:
        return self.headers["x-relay-id"].decode()


@dataclass
class FakeProducer:
    respond: Callable[[Sent], KafkaError | None] = lambda _sent: None
    raise_on_produce: Callable[[Sent], BaseException | None] = lambda _sent: None
    capacity: int = 1_000_000  # librdkafka's local queue: BufferError past it
    hold: bool = False  # a stalled broker: no reports until released
    sent: list[Sent] = field(default_factory=list)
    waiting: list[tuple[Sent, DeliveryCallback]] = field(default_factory=list)
    purged: int = 0

    def produce(  # noqa: PLR0917 - confluent-kafka's signature, by position or name
            self, topic: str, value: bytes | None = None, key: bytes | None = None,
            partition: int = -1, callback: DeliveryCallback | None = None,
            on_delivery: DeliveryCallback | None = None, timestamp: int = 0,
            headers: list[tuple[str, str | bytes]] | None = None) -> None:
        del partition
        # As confluent-kafka does: a text header value goes out as its UTF-8 bytes.
        message = Sent(topic, value, key,
                       {name: v.encode() if isinstance(v, str) else v
                        for name, v in headers or []}, timestamp)
        report = callback or on_delivery
        assert report is not None, "every record is produced with a delivery callback"
        error = self.raise_on_produce(message)
        if error is not None:
            raise error
        if len(self.waiting) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.sent.append(message)
        self.waiting.append((message, report))

    def poll(self, timeout: float = 0) -> int:
        if self.hold:
            return 0
        answered, self.waiting = self.waiting, []
        for message, callback in answered:
            callback(self.respond(message), message)
        return len(answered)

    def flush(self, timeout: float = 0) -> int:
        self.poll(timeout)
        return len(self.waiting)

    def purge(self, in_queue: bool = True, in_flight: bool = True,
              blocking: bool = True) -> None:
        purged, self.waiting = self.waiting, []
        self.purged += len(purged)
        for message, callback in purged:
            callback(KafkaError(KafkaError._PURGE_QUEUE), message)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return {}

    def __len__(self) -> int:
        return len(self.waiting)


class FakeClock:
    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:
        self.now_ms = start_ms

    def wall_ms(self) -> int:
        return self.now_ms

    def monotonic(self) -> float:
        return self.now_ms / 1000

    def advance(self, ms: int) -> None:
        self.now_ms += ms


class Rig:
    """An engine on fake producers (one per build), a fake clock and a captured log."""

    def __init__(self, tmp_path: Path, *, limits: Limits | None = None,
                 producer: Callable[[], FakeProducer] = FakeProducer, **overrides: Any) -> None:
        self.config: Config = load_config(
            {"KAFKA_BOOTSTRAP_SERVERS": "fake:9092", "KAFKA_TOPIC": "t",
             "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool"),
             "KAFKA_RELAY_JOURNAL_DIR": str(tmp_path / "journal")}, **overrides)
        self.clock = FakeClock()
        self.log = io.StringIO()
        self.logger = JsonLogger(stream=self.log, level="DEBUG", clock=lambda: 0.0)
        self.producers: list[FakeProducer] = []
        self._make = producer
        self.spill = SpillChain.from_config(self.config, self.logger, wall_ms=self.clock.wall_ms)
        self.engine = DeliveryEngine(self.config, producer_factory=self._build, spill=self.spill,
                                     logger=self.logger, limits=limits,
                                     wall_ms=self.clock.wall_ms,
                                     monotonic=self.clock.monotonic)
        self._ids = 0

    def _build(self) -> FakeProducer:
        self.producers.append(self._make())
        return self.producers[-1]

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    def records(self, count: int, *, topic: str = "t", value: bytes = b"v",
                timestamp_ms: int | None = None, key: bytes | None = b"k") -> list[Record]:
        out = []
        for _ in range(count):
            self._ids += 1
            out.append(Record(id=f"r{self._ids}", topic=topic, key=key, value=value,
                              timestamp_ms=timestamp_ms, request_id="req-1"))
        return out

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            self.engine.pump.step()

    def counts(self) -> dict[str, int]:
        return self.engine.gauge().counts

    def assert_accounted(self) -> None:
        """accepted + restored == delivered + dead_lettered + spilled + spooled + pending."""
        c = self.counts()
        pending = self.engine.gauge().pending
        assert c["accepted"] + c["restored"] == (c["delivered"] + c["dead_lettered"]
                                                 + c["spilled"] + c["spooled"] + pending), c
        assert self.engine.status()["unaccounted"] == 0

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines() if line]
        return [e for e in lines if e.get("event") == name]

    def all_sent(self) -> list[Sent]:
        return [m for p in self.producers for m in p.sent]


def error_for(topic: str, code: int, *, fatal: bool = False
              ) -> Callable[[Sent], KafkaError | None]:
    """A broker that answers ``code`` for every record on ``topic`` and delivers the rest."""
    return lambda sent: KafkaError(code, fatal=fatal) if sent.topic == topic else None
