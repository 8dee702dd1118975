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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kafka_relay.config import Config
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record

SPILL_EVENT = "KAFKA_RELAY_SPILL"
SPOOL_PREFIX = "spool:"
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
        self._deadline: float | None = None

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

    def until(self, deadline: float) -> None:
        """From now on an S3 put that has not finished by ``deadline`` (monotonic) is abandoned
        for log lines: at SHUTDOWN a hung endpoint must not outlast the budget."""
        self._deadline = deadline

    # -- destinations ----------------------------------------------------------------

    def _default_s3_client(self) -> Any:
        import boto3  # noqa: PLC0415 - only environments with a spill bucket pay for boto3
        from botocore.config import Config as BotoConfig  # noqa: PLC0415

        # botocore's defaults (60 s timeouts, retries) would outlast any SHUTDOWN budget.
        bounded = BotoConfig(connect_timeout=1, read_timeout=2,
                             retries={"mode": "standard", "max_attempts": 2})
        return boto3.client("s3", region_name=self._config.region, config=bounded)

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
        body = to_ndjson(records)
        errors: list[BaseException] = []
        put = threading.Thread(
            target=self._put, name="kafka-relay-s3-put", daemon=True,
            args=(key, body.encode(), {"reason": reason[:512], "records": str(len(records))},
                  errors),
        )
        put.start()
        put.join(None if self._deadline is None else max(0.0, self._deadline - time.monotonic()))
        if put.is_alive():
            raise TimeoutError("the S3 put did not finish before the SHUTDOWN deadline")
        if errors:
            raise errors[0]
        destination = f"s3://{self._config.spill_bucket}/{key}"
        self._log.warning("spill.s3", destination=destination, records=len(records), reason=reason)
        return destination

    def _put(self, key: str, body: bytes, metadata: dict[str, str],
             errors: list[BaseException]) -> None:
        try:
            self._client().put_object(Bucket=self._config.spill_bucket, Key=key, Body=body,
                                      ContentType="application/x-ndjson", Metadata=metadata)
        except Exception as exc:  # handed to the waiting thread
            errors.append(exc)

    def _to_spool(self, records: Sequence[Record], reason: str) -> str:
        spool = self._config.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / f"{self._wall_ms()}-{uuid.uuid4().hex[:12]}.ndjson"
        tmp = path.with_suffix(".partial")
        tmp.write_text(to_ndjson(records), encoding="utf-8")
        os.replace(tmp, path)  # a crash mid-write leaves no half file to replay
        self._log.warning("spill.spool", destination=str(path), records=len(records),
                          reason=reason)
        return f"{SPOOL_PREFIX}{path}"

    def _to_log(self, records: Sequence[Record], reason: str) -> str:
        # One write for everything: a line per record under a lock is too slow for
        # 100k records in SHUTDOWN's budget.
        self._log.write_raw("\n".join(spill_lines(records, reason=reason)))
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


def spill_lines(records: Iterable[Record], *, reason: str) -> Iterator[str]:
    """``KAFKA_RELAY_SPILL`` log lines: records packed up to CloudWatch's event size, and a
    record too large for one line split into numbered chunks."""
    pack: list[str] = []
    size = 0

    def packed() -> str:
        return (f'{{"event":"{SPILL_EVENT}","level":"WARNING","reason":{json.dumps(reason)},'
                f'"records":[{",".join(pack)}]}}')

    for record in records:
        data = _spill_json(record)
        if len(data) > _MAX_LINE_DATA:
            yield from _chunks(record.id, data, reason)
            continue
        if pack and size + len(data) > _MAX_LINE_DATA:
            yield packed()
            pack, size = [], 0
        pack.append(data)
        size += len(data) + 1
    if pack:
        yield packed()


def _chunks(record_id: str, data: str, reason: str) -> Iterator[str]:
    chunks = [data[i:i + _MAX_LINE_DATA] for i in range(0, len(data), _MAX_LINE_DATA)]
    for index, chunk in enumerate(chunks):
        yield json.dumps(
            {"event": SPILL_EVENT, "level": "WARNING", "id": record_id, "reason": reason,
             "chunk": index, "chunks": len(chunks), "data": chunk},
            separators=(",", ":"),
        )


def _spill_json(record: Record) -> str:
    return json.dumps(record.to_spill(), separators=(",", ":"))


def to_ndjson(records: Iterable[Record]) -> str:
    """One spilled record a line: the S3 object and spool file format."""
    return "".join(_spill_json(r) + "\n" for r in records)


def read_ndjson(text: str) -> list[Record]:
    return [Record.from_spill(json.loads(line)) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class SpillRead:
    records: list[Record]
    incomplete: list[str]  # ids of chunked records with chunks missing from the lines read


def parse_spill_lines(lines: Iterable[str]) -> SpillRead:
    """Spilled records in log lines (other lines are ignored), chunked ones reassembled."""
    records: list[Record] = []
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
        if "records" in entry:
            records.extend(Record.from_spill(item) for item in entry["records"])
            continue
        parts.setdefault(entry["id"], {})[int(entry["chunk"])] = entry["data"]
        totals[entry["id"]] = int(entry["chunks"])
    incomplete = []
    for record_id, chunks in parts.items():
        if len(chunks) == totals[record_id]:
            data = "".join(chunks[i] for i in range(totals[record_id]))
            records.append(Record.from_spill(json.loads(data)))
        else:
            incomplete.append(record_id)
    return SpillRead(records, incomplete)
