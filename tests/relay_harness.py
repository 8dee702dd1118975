"""Run the extension's parts in-process against a real broker (no Lambda APIs needed)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.kafka_broker import free_port
from kafka_relay.app import Parts, assemble
from kafka_relay.aws_lambda import registration_events
from kafka_relay.client import RelayClient
from kafka_relay.config import Config, load_config
from kafka_relay.lifecycle.events import InvokeEvent, ShutdownEvent, parse_event
from kafka_relay.lifecycle.loop import EventLoop
from kafka_relay.observability.log import JsonLogger
from kafka_relay.ring import RING_DIR_ENV
from kafka_relay.tools.table import events_named

TOKEN = "test-session-token"


class LoopDriver:
    """Drives the real event loop with Extensions API events, as raw dicts or typed."""

    def __init__(self, parts: Parts) -> None:
        self.loop = EventLoop(parts.mode.listener, parts.config, parts.logger)

    def invoke(self, event: dict[str, Any] | InvokeEvent) -> None:
        if isinstance(event, dict):
            parsed = parse_event({"eventType": "INVOKE", **event}).event
            assert isinstance(parsed, InvokeEvent)
            event = parsed
        self.loop.invoke(event)

    def shutdown(self, reason: str, deadline_ms: int) -> int:
        return self.loop.shutdown(ShutdownEvent(reason, deadline_ms))


class Harness:
    def __init__(self, parts: Parts, log: io.StringIO) -> None:
        self.parts = parts
        self.loop = LoopDriver(parts)
        self._log = log
        self.client = RelayClient(env={RING_DIR_ENV: str(parts.config.ring_dir)},
                                  port=parts.config.port, token=TOKEN)

    @property
    def config(self) -> Config:
        return self.parts.config

    def log_lines(self) -> list[str]:
        """Everything the extension logged, one JSON object per line."""
        return self._log.getvalue().splitlines()

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return events_named(self.log_lines(), event)


@contextmanager
def running_relay(
    bootstrap: str, tmp_path: Path, *, env_extra: dict[str, str] | None = None, **overrides: Any
) -> Iterator[Harness]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_RELAY_TOKEN": TOKEN,
        "KAFKA_RELAY_PORT": str(free_port()),
        "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool"),
        "KAFKA_RELAY_JOURNAL_DIR": str(tmp_path / "journal"),
        RING_DIR_ENV: str(tmp_path / "ring"),
        "KAFKA_RELAY_TELEMETRY": "false",
        **(env_extra or {}),
    }
    config = load_config(env, **overrides)
    log = io.StringIO()
    parts = assemble(config, JsonLogger(stream=log, level="DEBUG"), registration_events(env))
    harness = Harness(parts, log)
    try:
        yield harness
    finally:
        harness.client.close()
        if parts.server is not None:
            parts.engine.stop()
            parts.server.stop()
            if parts.rings is not None:
                parts.rings.stop()
