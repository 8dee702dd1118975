"""One JSON object per log line, CloudWatch-friendly: level, event, request id, counts."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
# One encoder for every line: json.dumps with arguments builds a new one per call.
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonLogger:
    def __init__(
        self,
        *,
        level: str = "INFO",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._threshold = _LEVELS[level]
        self._stream = stream or sys.stdout
        self._clock = clock
        self._lock = threading.Lock()
        self.request_id: str | None = None

    def enabled(self, level: str) -> bool:
        """Whether lines of ``level`` are written (skip building them when not)."""
        return _LEVELS[level] >= self._threshold

    def log(self, level: str, event: str, **fields: Any) -> None:
        line = self.format(level, event, **fields)
        if line is not None:
            self.write_raw(line)

    def format(self, level: str, event: str, **fields: Any) -> str | None:
        """The line ``log`` would write, None below the level (to write with others)."""
        if _LEVELS[level] < self._threshold:
            return None
        record: dict[str, Any] = {
            "ts": round(self._clock(), 3),
            "level": level,
            "logger": "kafka-relay",
            "event": event,
        }
        if self.request_id is not None and "request_id" not in fields:
            record["request_id"] = self.request_id
        record.update(fields)
        return _encode(record)

    def write_raw(self, *lines: str) -> None:
        """Write pre-formatted lines (EMF blobs, spill lines) atomically, in one write."""
        with self._lock:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.log("DEBUG", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("INFO", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("WARNING", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("ERROR", event, **fields)


class LibrdkafkaLog:
    """A ``logger`` for confluent-kafka: librdkafka's own lines become JSON lines too.

    confluent-kafka calls only ``log(level, "%s [%s] %s", facility, name, text)``, with
    ``logging``'s numeric levels; so this is no ``logging.Logger`` (``logging`` and what it
    imports cost ~3 ms of CPU before the extension is ready)."""

    def __init__(self, target: JsonLogger) -> None:
        self._target = target

    def log(self, level: int, message: str, *args: object) -> None:
        name = next((name for name in ("ERROR", "WARNING", "INFO") if level >= _LEVELS[name]),
                    "DEBUG")
        self._target.log(name, "librdkafka", message=message % args if args else message)
