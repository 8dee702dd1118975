"""Spill: the last places a record can end when Kafka (and its DLQ) will not take it.

Order: an S3 object (``KAFKA_RELAY_SPILL_BUCKET``, one NDJSON object per
spill); else, while the environment lives, the ``/tmp`` spool that the next
invocation re-sends first; at SHUTDOWN, ``KAFKA_RELAY_SPILL`` JSON log lines
that ``python -m kafka_relay.replay`` re-produces.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kafka_relay.config import Config
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record

SPILL_EVENT = "KAFKA_RELAY_SPILL"
# CloudWatch Logs caps an event at 256 KB; stay well under with the envelope.
_MAX_LINE_DATA = 150_000


class Spiller:
    def __init__(
        self,
        config: Config,
        logger: JsonLogger,
        *,
        s3_client_factory: Callable[[], Any] | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._config = config
        self._log = logger
        self._s3_factory = s3_client_factory or self._default_s3_client
        self._wall_ms = wall_ms
        self._s3: Any = None
        self._s3_lock = threading.Lock()
        self.final = False  # set at SHUTDOWN: the spool would die with the environment

    def warm(self) -> None:
        """Import boto3 and build the S3 client off the critical path (SHUTDOWN has 2 s)."""
        if self._config.spill_bucket:
            threading.Thread(target=self._client, name="kafka-relay-s3-warm", daemon=True).start()

    def __call__(self, records: Sequence[Record], *, reason: str, retry_later: bool = True) -> str:
        """Spill ``records``; ``retry_later=False`` skips the spool (retrying cannot help)."""
        if not records:
            return "none"
        if self._config.spill_bucket:
            try:
                return self._to_s3(records, reason)
            except Exception as exc:
                self._log.error("spill.s3_failed", bucket=self._config.spill_bucket,
                                error=str(exc), records=len(records))
        if retry_later and not self.final:
            try:
                return self._to_spool(records, reason)
            except OSError as exc:
                self._log.error("spill.spool_failed", dir=str(self._config.spool_dir),
                                error=str(exc), records=len(records))
        return self._to_log(records, reason)

    # -- destinations ----------------------------------------------------------------

    def _default_s3_client(self) -> Any:
        import boto3  # noqa: PLC0415 - only environments with a spill bucket pay for boto3

        return boto3.client("s3", region_name=self._config.region)

    def _client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                self._s3 = self._s3_factory()
            return self._s3

    def _to_s3(self, records: Sequence[Record], reason: str) -> str:
        now = self._wall_ms()
        day = time.strftime("%Y/%m/%d", time.gmtime(now / 1000))
        function = self._config.function_name or "local"
        key = f"kafka-relay/{function}/{day}/{now}-{uuid.uuid4().hex[:12]}.ndjson"
        body = "".join(json.dumps(r.to_spill(), separators=(",", ":")) + "\n" for r in records)
        self._client().put_object(
            Bucket=self._config.spill_bucket, Key=key, Body=body.encode(),
            ContentType="application/x-ndjson",
            Metadata={"reason": reason[:512], "records": str(len(records))},
        )
        destination = f"s3://{self._config.spill_bucket}/{key}"
        self._log.warning("spill.s3", destination=destination, records=len(records), reason=reason)
        return destination

    def _to_spool(self, records: Sequence[Record], reason: str) -> str:
        spool = self._config.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / f"{self._wall_ms()}-{uuid.uuid4().hex[:12]}.ndjson"
        tmp = path.with_suffix(".partial")
        with open(tmp, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record.to_spill(), separators=(",", ":")) + "\n")
        os.replace(tmp, path)  # a crash mid-write leaves no half file to replay
        self._log.warning("spill.spool", destination=str(path), records=len(records),
                          reason=reason)
        return f"spool:{path}"

    def _to_log(self, records: Sequence[Record], reason: str) -> str:
        for record in records:
            for line in spill_lines(record, reason=reason):
                self._log.write_raw(line)
        self._log.warning("spill.log", records=len(records), reason=reason)
        return "log"

    def take_spool(self) -> list[Record]:
        """Records spooled by earlier invocations; their files are removed once read."""
        records: list[Record] = []
        spool = self._config.spool_dir
        if not spool.is_dir():
            return records
        for path in sorted(spool.glob("*.ndjson")):
            records.extend(read_ndjson(path.read_text(encoding="utf-8")))
            path.unlink()
        return records


def spill_lines(record: Record, *, reason: str) -> Iterator[str]:
    """``KAFKA_RELAY_SPILL`` log lines for one record, chunked under the CloudWatch limit."""
    data = json.dumps(record.to_spill(), separators=(",", ":"))
    chunks = [data[i:i + _MAX_LINE_DATA] for i in range(0, len(data), _MAX_LINE_DATA)] or [""]
    for index, chunk in enumerate(chunks):
        yield json.dumps(
            {"event": SPILL_EVENT, "level": "WARNING", "id": record.id, "reason": reason,
             "chunk": index, "chunks": len(chunks), "data": chunk},
            separators=(",", ":"),
        )


def read_ndjson(text: str) -> list[Record]:
    return [Record.from_spill(json.loads(line)) for line in text.splitlines() if line.strip()]


def records_from_log_lines(lines: Iterator[str] | Sequence[str]) -> list[Record]:
    """Reassemble spilled records from log lines (other lines are ignored)."""
    parts: dict[str, dict[int, str]] = {}
    totals: dict[str, int] = {}
    for line in lines:
        start = line.find("{")
        if start < 0 or SPILL_EVENT not in line:
            continue
        try:
            entry = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("event") != SPILL_EVENT:
            continue
        parts.setdefault(entry["id"], {})[int(entry["chunk"])] = entry["data"]
        totals[entry["id"]] = int(entry["chunks"])
    records = []
    for record_id, chunks in parts.items():
        if len(chunks) == totals[record_id]:
            data = "".join(chunks[i] for i in range(totals[record_id]))
            records.append(Record.from_spill(json.loads(data)))
    return records
