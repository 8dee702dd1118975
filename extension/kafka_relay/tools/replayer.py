"""Replay spilled records: read them back and re-produce them with their original ``x-relay-id``.

Sources: an S3 prefix (``s3://bucket/prefix``: the NDJSON objects the spiller
wrote), a spool directory or ``.ndjson`` file, a log file with
``KAFKA_RELAY_SPILL`` lines (a sandbox log, an ``aws logs`` export, or the
output of ``kafka-relay-logs --spilled-out``), or a CloudWatch log group; or,
with ``--from-topic``, a dead-letter topic (``kafka_relay.tools.redrive``).

Each record goes back to its original topic with its original timestamp or,
when it was on its way to the dead-letter queue, to the DLQ the spill record
names, with the ``x-relay-*`` headers (``--transient-to-original``: only
permanent failures stay DLQ-bound). Safe to repeat: the ids produced are kept
in a state file (``~/.kafka-relay/replayed-ids`` unless ``--state``) and a
second run skips them; ``--delete`` removes each source whose records all
went. Copies that still happen (``--no-state``) carry identical ``x-relay-id``
headers, for consumers to dedupe on.

Two layers: reading (sources → ``Batch`` of ``Record``) and producing
(``replay``), both driven by injected clients so tests can run them.
"""

from __future__ import annotations

import argparse
import functools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from confluent_kafka import KafkaError, KafkaException

from kafka_relay.config import BOOTSTRAP, Config, load_config
from kafka_relay.errors import ConfigError, RelayError
from kafka_relay.producer.classify import describe
from kafka_relay.producer.factory import ProducerFactory
from kafka_relay.record import Record
from kafka_relay.spill.codec import SPILL_EVENT, parse_spill_lines, read_ndjson
from kafka_relay.tools import redrive
from kafka_relay.tools.logs import (
    SPILL_FILTER_PATTERN,
    CloudWatchTail,
    LogsError,
    aws_errors,
    parse_time,
)

_MAX_FAILURES_SHOWN = 20
_LIBRDKAFKA_MAX_MESSAGE_BYTES = 1_000_000
DEFAULT_STATE = ".kafka-relay/replayed-ids"
# Bytes a record takes in a Kafka batch beyond key, value and headers (an upper bound).
_OVERHEAD = 100
# A dry run never connects: only the DLQ routing of the configuration matters.
_DRY_RUN_BOOTSTRAP = "dry-run.invalid:9092"
# Extra seconds for flush() beyond message.timeout.ms, so every record gets its report.
_FLUSH_SLACK_S = 5.0


class ReplayError(RelayError):
    """A replay source could not be read, or its contents are not kafka-relay spills."""


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Records read from one place; ``delete`` removes that place (None: not removable)."""

    origin: str
    records: list[Record]
    incomplete: tuple[str, ...] = ()  # ids of chunked log spills with chunks missing
    delete: Callable[[], None] | None = None  # raises ReplayError
    bad_lines: tuple[str, ...] = ()  # "origin line N: why", skipped; the rest is replayed


# What a damaged spill line raises when read back (bad JSON, bad base64, wrong shapes).
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _parse_ndjson(data: bytes, *, origin: str) -> tuple[list[Record], list[str]]:
    """The records of a spool file / S3 object, and the lines that could not be read."""
    try:
        return read_ndjson(data.decode("utf-8")), []
    except _UNREADABLE:
        pass  # find the damaged lines; every other line is still replayed
    records: list[Record] = []
    bad: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            records.extend(read_ndjson(raw.decode("utf-8")))
        except _UNREADABLE as exc:
            bad.append(f"{origin} line {number}: not a kafka-relay spill record ({_why(exc)})")
    return records, bad


def _ndjson_batch(origin: str, data: bytes, delete: Callable[[], None]) -> Batch:
    records, bad = _parse_ndjson(data, origin=origin)
    return Batch(origin, records, delete=delete, bad_lines=tuple(bad))


def read_spool(path: Path) -> Iterator[Batch]:
    """A spool directory's ``*.ndjson`` files (oldest first), or one such file."""
    if path.is_dir():
        files = sorted(path.glob("*.ndjson"))  # *.partial files are half-written: skipped
    elif path.is_file():
        files = [path]
    else:
        raise ReplayError(f"no spool directory or .ndjson file at {path}")
    return (
        _ndjson_batch(str(file), file.read_bytes(), functools.partial(_unlink, file))
        for file in files
    )


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        raise ReplayError(f"could not delete {path}: {exc}") from exc


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise ReplayError(f"{url!r} is not an S3 location: use s3://bucket or s3://bucket/prefix")
    return bucket, prefix


def read_s3(client: Any, url: str) -> Iterator[Batch]:
    """Every ``.ndjson`` object under an S3 prefix, in key (= time) order."""
    bucket, prefix = parse_s3_url(url)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
            for listed in page.get("Contents", []):
                key = str(listed["Key"])
                if not key.endswith(".ndjson"):
                    continue
                origin = f"s3://{bucket}/{key}"
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                yield _ndjson_batch(origin, body,
                                    functools.partial(_delete_object, client, bucket, key))
    except aws_errors() as exc:
        raise ReplayError(
            f"reading {url} failed ({exc}); check the bucket, the region (--region or "
            "AWS_REGION) and that your credentials allow s3:ListBucket and s3:GetObject"
        ) from exc


def _delete_object(client: Any, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except aws_errors() as exc:
        raise ReplayError(
            f"could not delete s3://{bucket}/{key} ({exc}); your credentials need s3:DeleteObject"
        ) from exc


def read_log_lines(lines: Iterable[str], *, origin: str) -> Batch:
    """Records spilled as ``KAFKA_RELAY_SPILL`` lines; any other line is ignored. A damaged
    spill line is skipped and named in ``bad_lines``; the other lines are replayed."""
    lines = list(lines)
    bad: list[str] = []
    try:
        read = parse_spill_lines(lines)
    except _UNREADABLE:
        good = []
        for number, line in enumerate(lines, 1):
            try:
                parse_spill_lines([line])
                good.append(line)
            except _UNREADABLE as exc:
                bad.append(f"{origin} line {number}: a malformed {SPILL_EVENT} line "
                           f"({_why(exc)})")
        try:
            read = parse_spill_lines(good)
        except _UNREADABLE as exc:  # only a reassembled chunked record can fail here
            raise ReplayError(f"a chunked {SPILL_EVENT} record in {origin} is malformed: "
                              f"{_why(exc)}") from exc
    return Batch(origin, read.records, incomplete=tuple(sorted(read.incomplete)),
                 bad_lines=tuple(bad))


def read_log_file(path: Path) -> Iterator[Batch]:
    if not path.is_file():
        raise ReplayError(f"no log file at {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    return iter([read_log_lines(text.splitlines(), origin=str(path))])


def read_cloudwatch(
    client: Any, group: str, *, start_ms: int | None, end_ms: int | None,
    page_size: int | None = None,
) -> Iterator[Batch]:
    """The spill lines of a log group, fetched with a server-side filter on the spill marker."""
    tail = CloudWatchTail(client, group, start_ms=start_ms, end_ms=end_ms,
                          filter_pattern=SPILL_FILTER_PATTERN, page_size=page_size)
    yield read_log_lines((line.message for line in tail.poll()), origin=f"log group {group}")


# -- producing -------------------------------------------------------------------------------


class ProducerLike(Protocol):
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


def error_kind(record: Record) -> str:
    """transient (retries ran out: the outage may be over) or permanent (the record itself)."""
    if record.error_kind:
        return record.error_kind
    return "transient" if (record.dlq_error or "").startswith("gave up after") else "permanent"


def reason(record: Record) -> str:
    """Why the record was spilled, in a few words: the dry run counts by it."""
    error = record.dlq_error or record.last_error
    if error is None:
        return "not delivered in time (outage or shutdown)"
    kind = error_kind(record) if record.dlq_error else "transient"
    return f"{kind}: {redrive.error_code(error)}"


def destination(
    record: Record, config: Config, *, to_original: bool = False,
    transient_to_original: bool = False,
) -> tuple[str, list[tuple[str, bytes]]]:
    """Topic and headers for a replayed record: where the extension was sending it (its DLQ
    as the spill names it), or its own topic when asked (all, or only transient failures)."""
    back = to_original or (transient_to_original and error_kind(record) == "transient")
    if record.dlq_error is not None and not back:
        dlq = record.dlq_topic or config.dlq_for(record.topic)
        return dlq, record.kafka_headers(dlq_topic=dlq)
    return record.topic, record.kafka_headers()


def max_message_bytes(config: Config) -> int:
    """The producer's message.max.bytes (KAFKA_PRODUCER_MESSAGE_MAX_BYTES, else librdkafka's)."""
    value = config.producer_overrides.get("message.max.bytes")
    return int(value) if value and value.isdigit() else _LIBRDKAFKA_MAX_MESSAGE_BYTES


def _size(record: Record, headers: list[tuple[str, bytes]]) -> int:
    return record.size + sum(len(name) + len(value) for name, value in headers) + _OVERHEAD


def too_large(record: Record, headers: list[tuple[str, bytes]], limit: int) -> str | None:
    """Why the producer will refuse the record as too large (None: it fits)."""
    size = _size(record, headers)
    if size <= limit:
        return None
    return (f"{size} bytes is over the producer's message.max.bytes={limit}: raise "
            "KAFKA_PRODUCER_MESSAGE_MAX_BYTES and the topic's max.message.bytes")


def refused_as_too_large(record: Record, headers: list[tuple[str, bytes]], limit: int) -> str:
    """What to change after Kafka refused the record as too large."""
    return (too_large(record, headers, limit)
            or f"{_size(record, headers)} bytes is over the topic's max.message.bytes: raise it "
               "(kafka-configs --alter --add-config max.message.bytes=...)")


class ReplayedIds:
    """The ids replayed before (one per line in a local file): a second run skips them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._ids: set[str] = set()
        if path is not None and path.is_file():
            self._ids = set(path.read_text(encoding="utf-8").split())
        self._out: TextIO | None = None

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._ids

    def add(self, record_id: str) -> None:
        if self.path is None:
            return
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        self._ids.add(record_id)
        self._out.write(record_id + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


@dataclass
class SourceResult:
    origin: str
    records: int
    produced: int = 0
    failed: int = 0
    skipped: int = 0  # replayed by an earlier run (the replayed-ids file)
    unreadable: int = 0
    deleted: bool = False
    kept: str | None = None  # with --delete: why it was not deleted


@dataclass
class ReplayReport:
    read: int = 0
    produced: int = 0
    failed: int = 0
    skipped: int = 0
    sources: list[SourceResult] = field(default_factory=list)
    by_topic: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, reason)
    too_large: list[str] = field(default_factory=list)  # predicted or seen oversize failures
    incomplete: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)  # skipped: unreadable spill lines
    failures: list[str] = field(default_factory=list)
    error: str | None = None  # reading stopped, or deleting failed

    @property
    def deleted(self) -> int:
        return sum(1 for source in self.sources if source.deleted)

    @property
    def ok(self) -> bool:
        return (self.failed == 0 and not self.incomplete and not self.bad_lines
                and self.error is None)

    def fail(self, count: int, reason: str) -> None:
        self.failed += count
        if len(self.failures) < _MAX_FAILURES_SHOWN:
            self.failures.append(reason)


def replay(
    batches: Iterable[Batch],
    *,
    config: Config,
    producer: ProducerLike | None,
    to_original: bool = False,
    transient_to_original: bool = False,
    timeout_s: float = 30.0,
    delete: bool = False,
    replayed: ReplayedIds | None = None,
) -> ReplayReport:
    """Produce every record of ``batches``; ``producer=None`` is a dry run (count only).

    With ``delete``, each source is removed once all its records were produced (or were
    replayed before); a source with a failure stays, and the report says why. Records in
    ``replayed`` are skipped, and what is produced now is added to it.
    """
    report = ReplayReport()
    replayed = replayed or ReplayedIds(None)
    deleters: list[tuple[SourceResult, Batch]] = []
    limit = max_message_bytes(config)

    def delivered(record: Record, topic: str, headers: list[tuple[str, bytes]],
                  source: SourceResult, error: KafkaError | None, _msg: object) -> None:
        if error is None:
            report.produced += 1
            source.produced += 1
            replayed.add(record.id)
            return
        source.failed += 1
        detail = describe(error)
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            detail = f"{detail}; {refused_as_too_large(record, headers, limit)}"
        report.fail(1, f"{record.id} → {topic}: {detail}")

    try:
        for batch in batches:
            source = SourceResult(batch.origin, len(batch.records),
                                  unreadable=len(batch.bad_lines) + len(batch.incomplete))
            report.sources.append(source)
            report.read += len(batch.records)
            report.incomplete += batch.incomplete
            report.bad_lines += batch.bad_lines
            if batch.delete is not None:
                deleters.append((source, batch))
            for record in batch.records:
                if record.id in replayed:
                    report.skipped += 1
                    source.skipped += 1
                    continue
                topic, headers = destination(record, config, to_original=to_original,
                                             transient_to_original=transient_to_original)
                report.by_topic[topic] += 1
                report.by_reason[(topic, reason(record))] += 1
                oversize = too_large(record, headers, limit)
                if oversize is not None:
                    report.too_large.append(f"{record.id} → {topic}: {oversize}")
                if producer is not None:
                    _produce(producer, record, topic, headers, report, source=source,
                             limit=limit, on_delivery=functools.partial(
                                 delivered, record, topic, headers, source))
    except (ReplayError, LogsError, OSError) as exc:
        report.error = f"reading stopped: {exc}"
    if producer is not None:
        unsent = producer.flush(timeout_s + _FLUSH_SLACK_S)
        if unsent:
            report.fail(unsent, f"{unsent} records got no delivery report in {timeout_s:g} s")
    replayed.close()
    if delete and producer is not None and report.error is None:
        _delete_done(deleters, report)
    return report


def _delete_done(deleters: list[tuple[SourceResult, Batch]], report: ReplayReport) -> None:
    for source, batch in deleters:
        if source.failed or source.produced + source.skipped < source.records:
            source.kept = (f"{source.failed or source.records - source.produced - source.skipped}"
                           " of its records were not produced")
        elif source.unreadable:
            source.kept = f"{source.unreadable} of its lines could not be read"
        if source.kept is not None or batch.delete is None:
            continue
        try:
            batch.delete()
        except ReplayError as exc:
            source.kept = str(exc)
            report.error = f"replayed everything, but {exc}"
            continue
        source.deleted = True


def _produce(
    producer: ProducerLike,
    record: Record,
    topic: str,
    headers: list[tuple[str, bytes]],
    report: ReplayReport,
    *,
    source: SourceResult,
    limit: int,
    on_delivery: Callable[[KafkaError | None, object], None],
) -> None:
    unfit = unproducible(record, topic, headers)
    if unfit is not None:
        source.failed += 1
        report.fail(1, f"{record.id} → {topic}: skipped, {unfit}")
        return
    while True:
        try:
            # The time it was handed over, not the replay's: consumers see when it happened.
            producer.produce(topic, key=record.key, value=record.value, headers=headers,
                             timestamp=record.timestamp_ms or record.accepted_ms or 0,
                             on_delivery=on_delivery)
        except BufferError:
            producer.poll(0.1)  # librdkafka's queue is full: let deliveries drain it
            continue
        except Exception as exc:  # one record's fault (type, range, size): skip it, go on
            source.failed += 1
            error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                detail = f"{describe(error)}; {refused_as_too_large(record, headers, limit)}"
            else:
                detail = str(error) if error is not None else _why(exc)
            report.fail(1, f"{record.id} → {topic}: {detail}")
        producer.poll(0)
        return


_MAX_TIMESTAMP_MS = 2**63 - 1


def unproducible(record: Record, topic: str, headers: list[tuple[str, bytes]]) -> str | None:
    """Why confluent-kafka cannot take this record, checked before ``produce``: a header
    name that is not UTF-8 (a lone surrogate) crashes the process inside it."""
    for name in (topic, *(name for name, _ in headers)):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return f"the topic or a header name ({name!r}) is not valid UTF-8"
    stamp = record.timestamp_ms
    if stamp is not None and (not isinstance(stamp, int) or not 0 <= stamp <= _MAX_TIMESTAMP_MS):
        return f"timestamp_ms {stamp!r} is not a Kafka timestamp (0 .. 2^63-1)"
    return None


def kafka_producer(config: Config, timeout_s: float) -> ProducerLike:
    """A producer with the extension's settings; records give up after ``timeout_s``."""
    # librdkafka's default message.timeout.ms (300 s) would make an unreachable topic hang
    # the command; a KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS override still wins.
    factory = ProducerFactory(config, extra={"client.id": "kafka-relay-replay",
                                             "message.timeout.ms": int(timeout_s * 1000)})
    return factory()


# -- command line ----------------------------------------------------------------------------


def _default_aws_client(service: str, region: str | None) -> Any:
    import boto3  # noqa: PLC0415 - only S3 and CloudWatch sources need boto3

    return boto3.client(service, region_name=region)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafka-relay-replay",
        description="Re-produce records kafka-relay spilled, with their original x-relay-id "
                    "and timestamp. Safe to repeat: ids replayed before are skipped (see "
                    "--state). --from-topic redrives a dead-letter topic instead.",
    )
    parser.add_argument("source", nargs="?",
                        help="s3://bucket/prefix, a spool directory, or a spooled .ndjson file")
    parser.add_argument("--log-file", type=Path,
                        help=f"a log file with {SPILL_EVENT} lines (sandbox log, aws logs "
                             "export, or python -m kafka_relay.tools.logs --spilled-out)")
    parser.add_argument("--log-group", help=f"a CloudWatch log group to search for {SPILL_EVENT}")
    parser.add_argument("--start", "--since", dest="start",
                        help="with --log-group or --from-topic: from (epoch ms, ISO 8601, or "
                             "an age like 2h; default: everything retained)")
    parser.add_argument("--end", "--until", dest="end",
                        help="with --log-group or --from-topic: until (same forms; default "
                             "now)")
    parser.add_argument("--region", help="AWS region for S3 and CloudWatch (default: AWS_REGION)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: "
                                            "KAFKA_BOOTSTRAP_SERVERS; credentials from KAFKA_*)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and count by destination and reason, predict records "
                             "too large to produce; produce (and commit) nothing")
    parser.add_argument("--delete", action="store_true",
                        help="remove each spool file / S3 object whose records were all "
                             "produced; the others stay, and the output says why")
    parser.add_argument("--to-original-topic", action="store_true",
                        help="send every record that was bound for the DLQ to its original "
                             "topic (after fixing what made them fail)")
    parser.add_argument("--transient-to-original", action="store_true",
                        help="send records that failed only transiently (an outage) to their "
                             "original topic; permanent failures still go to the DLQ")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--state", type=Path, metavar="FILE",
                       help="the file of ids replayed before, skipped now and added to "
                            f"(default {DEFAULT_STATE} under $HOME)")
    state.add_argument("--no-state", action="store_true",
                       help="replay everything again, whatever was replayed before")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long a record may take to be acknowledged (default 30)")
    redrive.add_arguments(parser)
    return parser


def _batches(
    args: argparse.Namespace,
    config: Config,
    aws_client: Callable[[str, str | None], Any],
    wall_ms: Callable[[], int],
) -> Iterator[Batch]:
    region = args.region or config.region
    if args.log_file:
        return read_log_file(args.log_file)
    if args.log_group:
        now = wall_ms()
        return read_cloudwatch(
            aws_client("logs", region), args.log_group,
            start_ms=parse_time(args.start, now_ms=now) if args.start else None,
            end_ms=parse_time(args.end, now_ms=now) if args.end else None,
        )
    if args.source.startswith("s3://"):
        return read_s3(aws_client("s3", region), args.source)
    path = Path(args.source)
    if path.is_file() and path.suffix != ".ndjson":
        raise ReplayError(f"{path} is not a spooled .ndjson file; for a log file use --log-file")
    return read_spool(path)


def main(
    argv: list[str],
    *,
    env: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    aws_client_factory: Callable[[str, str | None], Any] = _default_aws_client,
    producer_factory: Callable[[Config, float], ProducerLike] = kafka_producer,
    consumer_factory: Callable[[Config, str], Any] = redrive.consumer_for,
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> int:
    """0: everything replayed; 1: some records failed or were unreadable; 2: bad usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    chosen = [name for name in ("source", "log_file", "log_group", "from_topic")
              if getattr(args, name)]
    if len(chosen) != 1:
        parser.error("give exactly one source: SOURCE, --log-file, --log-group or --from-topic")
    if (args.start or args.end) and not (args.log_group or args.from_topic):
        parser.error("--start/--end select CloudWatch events or DLQ records; they need "
                     "--log-group or --from-topic")
    redrive_only = [flag for flag, value in (("--error-kind", args.error_kind),
                                             ("--match", args.match), ("--id", args.id),
                                             ("--group", args.group), ("--rate", args.rate))
                    if value]
    if redrive_only and not args.from_topic:
        parser.error(f"{', '.join(redrive_only)} select DLQ records: they need --from-topic")
    if args.from_topic:
        return _redrive(args, parser, env=env, stdout=stdout, stderr=stderr, wall_ms=wall_ms,
                        producer_factory=producer_factory, consumer_factory=consumer_factory)
    if args.delete and (args.dry_run or not args.source):
        parser.error("--delete removes spool files or S3 objects after a real replay: it needs "
                     "a SOURCE and no --dry-run")
    if args.to_original_topic and args.transient_to_original:
        parser.error("--to-original-topic sends every record back; --transient-to-original "
                     "only the transient failures: choose one")
    bootstrap = args.bootstrap or (_DRY_RUN_BOOTSTRAP if args.dry_run else None)
    try:
        config = _load_config(env, bootstrap)
        batches = _batches(args, config, aws_client_factory, wall_ms)
        producer = None if args.dry_run else producer_factory(config, args.timeout)
        report = replay(batches, config=config, producer=producer,
                        to_original=args.to_original_topic,
                        transient_to_original=args.transient_to_original,
                        timeout_s=args.timeout, delete=args.delete,
                        replayed=ReplayedIds(state_file(args, env)))
    except RelayError as exc:
        stderr.write(f"error: {exc}\n")
        return 2
    _print_report(report, args, stdout)
    return 0 if report.ok else 1


def _load_config(env: Mapping[str, str], bootstrap: str | None) -> Config:
    """The extension's settings; on the command line the brokers can also come as an option,
    so their absence names it too."""
    if not bootstrap and not any(env.get(name, "").strip() for name in BOOTSTRAP.names):
        raise ConfigError("no brokers: pass --bootstrap HOST:PORT, or set "
                          "KAFKA_BOOTSTRAP_SERVERS as on the function")
    return load_config(env, **({"bootstrap_servers": bootstrap} if bootstrap else {}))


def _redrive(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    env: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    wall_ms: Callable[[], int],
    producer_factory: Callable[[Config, float], ProducerLike],
    consumer_factory: Callable[[Config, str], Any],
) -> int:
    if args.delete or args.to_original_topic or args.transient_to_original:
        parser.error("--from-topic always sends records to their x-relay-original-topic and "
                     "commits offsets instead of deleting")
    try:
        pattern = re.compile(args.match) if args.match else None
    except re.error as exc:
        parser.error(f"--match {args.match!r} is not a regular expression: {exc}")
    try:
        now = wall_ms()
        filters = redrive.Filters(
            error_kind=args.error_kind, match=pattern, ids=frozenset(args.id),
            since_ms=parse_time(args.start, now_ms=now) if args.start else None,
            until_ms=parse_time(args.end, now_ms=now) if args.end else None)
        config = _load_config(env, args.bootstrap)
        group = args.group or redrive.default_group(args.from_topic, filters)
        consumer = consumer_factory(config, group)
        try:
            producer = None if args.dry_run else producer_factory(config, args.timeout)
            report = redrive.redrive(consumer, args.from_topic, filters=filters,
                                     producer=producer, group=group, rate=args.rate,
                                     timeout_s=args.timeout)
        finally:
            consumer.close()
    except (RelayError, redrive.RedriveError, KafkaException) as exc:
        stderr.write(f"error: {exc}\n")
        return 2
    redrive.print_report(report, args.from_topic, dry_run=args.dry_run, out=stdout)
    return 0 if report.ok else 1


def state_file(args: argparse.Namespace, env: Mapping[str, str]) -> Path | None:
    """--state, else the default under $HOME (none without a HOME, or with --no-state)."""
    if args.no_state:
        return None
    if args.state is not None:
        return Path(args.state)
    home = env.get("HOME")
    return Path(home) / DEFAULT_STATE if home else None


def _print_report(report: ReplayReport, args: argparse.Namespace, out: TextIO) -> None:
    source = args.source or args.log_file or args.log_group
    out.write(f"read {report.read} records from {len(report.sources)} source(s) at {source}\n")
    if report.skipped:
        out.write(f"skipped {report.skipped} replayed before (ids in the state file; "
                  "--no-state replays them again)\n")
    for topic, count in sorted(report.by_topic.items()):
        out.write(f"  {topic}: {count}\n")
        for (to, why), records in sorted(report.by_reason.items()):
            if to == topic:
                out.write(f"    {records:>6}  {why}\n")
    for line in report.too_large:
        out.write(f"{'will fail' if args.dry_run else 'too large'}: {line}\n")
    for line in report.bad_lines:
        out.write(f"skipped: {line}\n")
    for record_id in report.incomplete:
        out.write(f"incomplete: {record_id} (some of its {SPILL_EVENT} chunks are missing; "
                  "widen --start/--end or export the whole log stream)\n")
    if args.dry_run:
        out.write("dry run: nothing produced\n")
    else:
        out.write(f"produced {report.produced}, failed {report.failed}\n")
        for failure in report.failures:
            out.write(f"  failed: {failure}\n")
    if args.delete:
        for result in report.sources:
            if result.deleted:
                out.write(f"deleted {result.origin}\n")
            elif result.kept:
                out.write(f"kept {result.origin}: {result.kept}\n")
    if report.error:
        out.write(f"error: {report.error}\n")
