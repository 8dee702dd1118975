"""Spill sinks behind one protocol, tried in order: S3, the ``/tmp`` spool, log lines.

Each sink either takes every record it is given and says where (a typed
``SpillResult``) or raises; the chain then tries the next one. Log lines never
refuse, so a chain always ends somewhere.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from kafka_relay.aws_lambda import sdk_importable
from kafka_relay.config import Config
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from kafka_relay.spill.codec import (
    is_spool_header,
    ndjson_lines,
    read_ndjson,
    spill_lines,
    spool_header,
)

SPOOL_FILE_PREFIX = "kafka-relay-spool-"
SPOOL_GLOB = f"{SPOOL_FILE_PREFIX}*.ndjson"
QUARANTINE_SUFFIX = ".corrupt"


class SpillKind(str, Enum):
    S3 = "s3"  # an NDJSON object in KAFKA_RELAY_SPILL_BUCKET
    SPOOL = "spool"  # a /tmp file the next invocation re-sends (the record comes back)
    LOG = "log"  # KAFKA_RELAY_SPILL log lines, for python -m kafka_relay.tools.replay


class SpillResult:
    __slots__ = ("count", "kind", "location")

    def __init__(self, kind: SpillKind, location: str, count: int) -> None:
        self.kind = kind
        self.location = location  # s3://bucket/key, the spool file path, or "log"
        self.count = count

    @property
    def spooled(self) -> bool:
        """Parked for this environment to re-send, not settled for good."""
        return self.kind is SpillKind.SPOOL


class SpillSink(Protocol):
    @property
    def kind(self) -> SpillKind: ...

    def write(self, records: Sequence[Record], *, reason: str) -> SpillResult:
        """Take every record or raise."""
        ...


def _wall_ms() -> int:
    return int(time.time() * 1000)


class LogSink:
    """``KAFKA_RELAY_SPILL`` lines on stdout (CloudWatch), one packed line written at a time."""

    kind = SpillKind.LOG

    def __init__(self, logger: JsonLogger) -> None:
        self._log = logger

    def write(self, records: Sequence[Record], *, reason: str) -> SpillResult:
        for line in spill_lines(records, reason=reason):
            self._log.write_raw(line)
        self._log.warning("spill.log", records=len(records), reason=reason)
        return SpillResult(SpillKind.LOG, "log", len(records))


class S3Sink:
    """One NDJSON object per spill; a put still running at ``until``'s deadline is abandoned."""

    kind = SpillKind.S3

    def __init__(self, config: Config, logger: JsonLogger, *,
                 client_factory: Callable[[], Any] | None = None,
                 wall_ms: Callable[[], int] = _wall_ms,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        assert config.spill_bucket, "S3Sink needs KAFKA_RELAY_SPILL_BUCKET"
        self._bucket = config.spill_bucket
        self._function = config.function_name or "local"
        self._region = config.region
        self._log = logger
        self._factory = client_factory or self._default_client
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._client: Any = None
        self._lock = threading.Lock()
        self._deadline: float | None = None

    def warm(self) -> None:
        """Import boto3 and build the client off the critical path (SHUTDOWN has 2 s)."""
        threading.Thread(target=self._get_client, name="kafka-relay-s3-warm", daemon=True).start()

    def until(self, deadline: float | None) -> None:
        """From now on a put that has not finished by ``deadline`` (monotonic) is abandoned."""
        self._deadline = deadline

    def _default_client(self) -> Any:
        sdk_importable()
        import boto3  # noqa: PLC0415 - only environments with a spill bucket pay for boto3
        from botocore.config import Config as BotoConfig  # noqa: PLC0415

        # botocore's defaults (60 s timeouts, retries) would outlast any SHUTDOWN budget.
        bounded = BotoConfig(connect_timeout=1, read_timeout=2,
                             retries={"mode": "standard", "max_attempts": 2})
        return boto3.client("s3", region_name=self._region, config=bounded)

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def write(self, records: Sequence[Record], *, reason: str) -> SpillResult:
        now = self._wall_ms()
        day = time.strftime("%Y/%m/%d", time.gmtime(now / 1000))
        key = f"kafka-relay/{self._function}/{day}/{now}-{os.urandom(6).hex()}.ndjson"
        body = "".join(ndjson_lines(records)).encode()
        errors: list[BaseException] = []
        metadata = {"reason": reason[:512], "records": str(len(records))}
        put = threading.Thread(target=self._put, args=(key, body, metadata, errors),
                               name="kafka-relay-s3-put", daemon=True)
        put.start()
        put.join(None if self._deadline is None
                 else max(0.0, self._deadline - self._monotonic()))
        if put.is_alive():
            raise TimeoutError("the S3 put did not finish before the SHUTDOWN deadline")
        if errors:
            raise errors[0]
        location = f"s3://{self._bucket}/{key}"
        self._log.warning("spill.s3", destination=location, records=len(records), reason=reason)
        return SpillResult(SpillKind.S3, location, len(records))

    def _put(self, key: str, body: bytes, metadata: dict[str, str],
             errors: list[BaseException]) -> None:
        try:
            self._get_client().put_object(Bucket=self._bucket, Key=key, Body=body,
                                          ContentType="application/x-ndjson", Metadata=metadata)
        except Exception as exc:  # handed to the waiting thread
            errors.append(exc)


class SpoolSink:
    """``kafka-relay-spool-*.ndjson`` files under ``KAFKA_RELAY_SPOOL_DIR``, each opening with a
    header line. Only such files are read back or deleted; a corrupt one is renamed
    ``*.corrupt`` (quarantined) and logged, never raised."""

    kind = SpillKind.SPOOL

    def __init__(self, directory: Path, logger: JsonLogger, *,
                 wall_ms: Callable[[], int] = _wall_ms) -> None:
        self._dir = directory
        self._log = logger
        self._wall_ms = wall_ms
        self._written = 0  # files written in the same millisecond still sort in order
        # Scan the directory at the first take (what an earlier environment left) and after
        # this process spooled; not at every invocation. Another environment sharing the
        # directory leaves files this one reads at its next start.
        self._unread = True

    def write(self, records: Sequence[Record], *, reason: str) -> SpillResult:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._written += 1
        name = (f"{SPOOL_FILE_PREFIX}{self._wall_ms():013d}-{self._written:08d}-"
                f"{os.urandom(4).hex()}.ndjson")
        path = self._dir / name
        partial = path.with_name(name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            out.write(spool_header(reason))
            out.writelines(ndjson_lines(records))
        os.replace(partial, path)  # a crash mid-write leaves no half file to restore
        self._unread = True  # after the file is there: a take that misses it sees the flag
        self._log.warning("spill.spool", destination=str(path), records=len(records),
                          reason=reason)
        return SpillResult(SpillKind.SPOOL, str(path), len(records))

    def take(self) -> list[Record]:
        """Records spooled earlier (oldest file first); each file is removed once read."""
        if not self._unread:
            return []
        self._unread = False  # before the scan: a file written during it sets it again
        try:
            files = sorted(self._dir.glob(SPOOL_GLOB)) if self._dir.is_dir() else []
        except OSError as exc:
            self._log.error("spool.unreadable", dir=str(self._dir), error=str(exc))
            return []
        records: list[Record] = []
        for path in files:
            try:
                records.extend(self._read(path))
                path.unlink()
            except Exception as exc:  # whatever is wrong with one file must not stop the rest
                quarantine(path, exc, self._log, kind="spool")
        return records

    @staticmethod
    def _read(path: Path) -> list[Record]:
        text = path.read_text(encoding="utf-8")
        first = text.split("\n", 1)[0]
        if not is_spool_header(json.loads(first) if first.strip() else None):
            raise ValueError("no kafka-relay spool header on the first line")
        return read_ndjson(text)



def quarantine(path: Path, exc: BaseException, logger: JsonLogger, *, kind: str) -> None:
    """Move one of our files that cannot be read out of the way (``*.corrupt``) and log it:
    it must neither stop the extension nor be read again at the next start."""
    target = path.with_name(path.name + QUARANTINE_SUFFIX)
    try:
        os.replace(path, target)
    except OSError as move_error:
        logger.error(f"{kind}.quarantine_failed", file=str(path), error=str(move_error))
        return
    logger.error(f"{kind}.quarantined", file=str(path), moved_to=str(target),
                 error=f"{type(exc).__name__}: {exc}")


class SpillChain:
    """Sinks in order; the first that takes the records wins. The spool is skipped when
    retrying cannot help (``retry_later=False``) and once ``final`` (SHUTDOWN: /tmp dies
    with the environment)."""

    def __init__(self, sinks: Sequence[SpillSink], logger: JsonLogger, *,
                 spool: SpoolSink | None = None, s3: S3Sink | None = None) -> None:
        assert sinks[-1].kind is SpillKind.LOG, "log lines must end the chain"
        self._sinks = list(sinks)
        self._log = logger
        self.spool = spool
        self.s3 = s3
        self.final = False

    @classmethod
    def from_config(cls, config: Config, logger: JsonLogger, *,
                    s3_client_factory: Callable[[], Any] | None = None,
                    wall_ms: Callable[[], int] = _wall_ms) -> SpillChain:
        s3 = (S3Sink(config, logger, client_factory=s3_client_factory, wall_ms=wall_ms)
              if config.spill_bucket else None)
        spool = SpoolSink(config.spool_dir, logger, wall_ms=wall_ms)
        sinks: list[SpillSink] = [*([s3] if s3 else []), spool, LogSink(logger)]
        return cls(sinks, logger, spool=spool, s3=s3)

    def warm(self) -> None:
        if self.s3 is not None:
            self.s3.warm()

    def until(self, deadline: float | None) -> None:
        """Abandon S3 puts still running at ``deadline`` (monotonic)."""
        if self.s3 is not None:
            self.s3.until(deadline)

    def take_spooled(self) -> list[Record]:
        return self.spool.take() if self.spool is not None else []

    def spill(self, records: Sequence[Record], *, reason: str,
              retry_later: bool = True) -> SpillResult:
        if not records:
            return SpillResult(SpillKind.LOG, "none", 0)
        for sink in self._sinks:
            if sink.kind is SpillKind.SPOOL and (self.final or not retry_later):
                continue
            if sink.kind is SpillKind.LOG:
                return sink.write(records, reason=reason)
            try:
                return sink.write(records, reason=reason)
            except Exception as exc:
                self._log.error(f"spill.{sink.kind.value}_failed", error=str(exc),
                                records=len(records))
        raise AssertionError("unreachable: the chain ends with log lines")
