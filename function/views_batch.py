"""Batch layer: archive records to S3 as typed rows, and close hour and day views from S3.

``views_batch.archive_handler`` (a second Kafka event source mapping on the same topics,
its own consumer group) decodes each record into a typed row (price: ``market_id,
token_id, outcome, question``, ``price`` as ``views_sql.PRICE_TYPE``, an exact decimal,
``ts``; feed item: ``source, guid, fetched_hour, counted``; both: ``topic, partition,
offset, timestamp_ms, relay_id``) and lands the rows as Parquet (written by DuckDB), split
by the minute the record happened in, Hive-style::

    archive/topic=<t>/dt=YYYY-MM-DD/hour=HH/minute=MM/<partition>-<firstOffset>-<lastOffset>.parquet

Names are deterministic, so a redelivered batch overwrites its object; a batch redelivered
with other boundaries overlaps an older object, which the views tolerate (rows are
deduplicated by topic-partition-offset, then by identity as in the speed layer). A record
that does not decode is quarantined under ``failures/poison/`` instead. A feed item is
claimed by the first record of it the archive sees (``views_state``); its resends carry
``counted: false``, so an item counts once across hours, as in the speed layer. Every hour
written is marked dirty; the archive's progress per topic-partition is recorded.
Objects of the JSON-lines archive that came before (``.ndjson``, one row per line) are
still read.

``views_batch.close_handler`` (an hourly EventBridge schedule) closes hours: every dirty
hour, and every hour in the last ``VIEWS_SWEEP_HOURS`` without a view (a missed or failed
run), whose end is ``VIEWS_LATENESS_HOURS`` behind **and** which the archive has caught up
past (``views_state.covered``; an hour the speed layer counted late records for waits until
the archive has reached them). Hours that cannot close yet stay dirty and are served from
the speed layer. Each closed hour is written as one row per market and token, and its
day is rewritten from its 24 hour views once all are closed, so hour and day agree. An
hour's view is ``views_sql``'s SQL run by DuckDB over the hour's archive objects::

    views/prices_hour/dt=D/hour=HH/view.ndjson   views/feeds_hour/dt=D/hour=HH/view.ndjson
    views/prices_day/dt=D/view.ndjson            views/feeds_day/dt=D/view.ndjson

``{"hour": H}``, ``{"day": D}`` or ``{"from": D1, "to": D2}`` (days or hours) recompute
those periods now (backfill); recomputing is deterministic: same archive, same bytes.
``python -m views_batch --from D1 --to D2`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from views_event import KafkaRecord, parse_event
from views_model import (
    FeedItem,
    PeriodViews,
    PoisonRecord,
    ViewsConfig,
    decode_feed_item,
    decode_price,
    event_time,
    feed_row,
    hour_end,
    hour_of,
    hours_of_day,
    item_from_row,
    parse_day,
    parse_hour,
    point_from_row,
    price_row,
)
from views_speed import Quarantine, aggregate_from_item, log_json
from views_sql import UnreadableArchive, engine
from views_state import Metrics, ViewsState, covered

ARCHIVE = "archive"


def hour_view_keys(hour: str) -> tuple[str, str]:
    """(prices, feeds) objects of an hour's view; the prices object is written last and
    marks the view as present."""
    where = f"dt={hour[:10]}/hour={hour[11:13]}/view.ndjson"
    return f"views/prices_hour/{where}", f"views/feeds_hour/{where}"


def day_view_keys(day: str) -> tuple[str, str]:
    return f"views/prices_day/dt={day}/view.ndjson", f"views/feeds_day/dt={day}/view.ndjson"


def ndjson(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, sort_keys=True).encode() + b"\n" for row in rows)


@dataclass
class Archived:
    keys: list[str] = field(default_factory=list)
    hours: set[str] = field(default_factory=set)
    poison: int = 0


@dataclass
class BatchLayer:
    bucket: str
    s3: Any
    config: ViewsConfig
    state: ViewsState
    quarantine: Quarantine
    clock: Callable[[], float] = time.time

    # -- archive --------------------------------------------------------------------------

    def _row(self, record: KafkaRecord) -> dict[str, Any] | None:
        """The record's archive row; None for another topic. PoisonRecord if it does not
        decode."""
        if record.topic == self.config.price_topic:
            return price_row(decode_price(record), record)
        if record.topic == self.config.rss_topic:
            item = decode_feed_item(record)
            counted = self.state.claim(item.identity, record.position, item.hour,
                                       self.config.dedupe_expiry(self.clock()))
            return feed_row(FeedItem(item.source, item.guid, item.hour, item.order, counted),
                            record)
        return None

    def archive(self, records: tuple[KafkaRecord, ...]) -> Archived:
        """One object per topic, partition and event minute; every hour written is marked
        dirty, then each partition's progress is recorded."""
        done = Archived()
        groups: dict[tuple[str, int, str], list[tuple[KafkaRecord, dict[str, Any]]]] = {}
        for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
            try:
                row = self._row(record)
            except PoisonRecord as exc:
                self.quarantine.put(record, str(exc))
                done.poison += 1
                continue
            if row is None:
                continue
            moment = event_time(record, self.config)
            minute = f"{moment:dt=%Y-%m-%d/hour=%H/minute=%M}"
            done.hours.add(hour_of(moment))
            groups.setdefault((record.topic, record.partition, minute), []).append(
                (record, row))
        with engine() as sql:
            for (topic, partition, minute), rows in sorted(groups.items()):
                key = (f"{ARCHIVE}/topic={topic}/{minute}/"
                       f"{partition}-{rows[0][0].offset}-{rows[-1][0].offset}.parquet")
                table = "archive_prices" if topic == self.config.price_topic else "archive_feeds"
                self.s3.put_object(Bucket=self.bucket, Key=key,
                                   Body=sql.parquet(table, [r for _, r in rows]),
                                   ContentType="application/vnd.apache.parquet")
                done.keys.append(key)
        for hour in sorted(done.hours):
            self.state.mark_dirty(hour)
        newest: dict[str, KafkaRecord] = {}
        for record in records:
            kept = newest.get(record.group)
            if kept is None or record.offset > kept.offset:
                newest[record.group] = record
        for group, record in sorted(newest.items()):
            self.state.advance("archive", group, record.offset, record.timestamp_ms)
        return done

    # -- reading --------------------------------------------------------------------------

    def _keys(self, prefix: str) -> Iterable[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield str(entry["Key"])

    def _get(self, key: str) -> bytes | None:
        try:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None

    def _legacy_rows(self, key: str, body: bytes, check: Callable[[Any], object]
                     ) -> tuple[list[dict[str, Any]], int]:
        """The rows of a JSON-lines archive object (the archive's format before Parquet)
        and how many lines could not be read (each quarantined)."""
        rows: list[dict[str, Any]] = []
        bad = 0
        for number, line in enumerate(body.splitlines(), 1):
            try:
                row = json.loads(line)
                check(row)
            except (ValueError, PoisonRecord) as exc:
                self.quarantine.put_line(key, number, line, str(exc))
                bad += 1
                continue
            rows.append(row)
        return rows, bad

    def compute_hour(self, hour: str) -> tuple[PeriodViews, int]:
        """The hour's view, by DuckDB over the hour's archive objects, and the number of
        objects (or, in JSON-lines objects, lines) that could not be read: each is
        quarantined and skipped."""
        moment = parse_hour(hour)
        where = f"dt={moment:%Y-%m-%d}/hour={moment:%H}/"
        bad = 0
        found = [(table, check, sorted(self._keys(f"{ARCHIVE}/topic={topic}/{where}")))
                 for topic, table, check in (
                     (self.config.price_topic, "archive_prices", point_from_row),
                     (self.config.rss_topic, "archive_feeds", item_from_row))]
        if not any(keys for _, _, keys in found):
            # Nothing archived (most hours a sweep or backfill closes): no DuckDB to start.
            return PeriodViews.empty(), 0
        with engine() as sql:
            for table, check, keys in found:
                for key in keys:
                    body = self._get(key) or b""
                    if key.endswith(".ndjson"):
                        rows, unread = self._legacy_rows(key, body, check)
                        sql.add_rows(table, rows)
                        bad += unread
                        continue
                    try:
                        sql.add_object(table, body)
                    except UnreadableArchive as exc:
                        self.quarantine.put_object(key, body, str(exc))
                        bad += 1
            views = sql.views("hour")
        return views.get(hour, PeriodViews.empty()), bad

    def _read_view(self, keys: tuple[str, str]) -> PeriodViews | None:
        prices = self._get(keys[0])
        if prices is None:
            return None
        feeds = self._get(keys[1]) or b""
        return PeriodViews.from_rows((json.loads(line) for line in prices.splitlines()),
                                     (json.loads(line) for line in feeds.splitlines()))

    def hour_view(self, hour: str) -> PeriodViews | None:
        return self._read_view(hour_view_keys(hour))

    def day_view(self, day: str) -> PeriodViews | None:
        return self._read_view(day_view_keys(day))

    def hours_with_views(self, day: str) -> set[str]:
        return {f"{day}T{key.split('hour=')[1][:2]}"
                for key in self._keys(f"views/prices_hour/dt={day}/")}

    # -- writing --------------------------------------------------------------------------

    def _write(self, keys: tuple[str, str], period: str, view: PeriodViews) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=keys[1], Body=ndjson(view.feed_rows(period)),
                           ContentType="application/x-ndjson")
        self.s3.put_object(Bucket=self.bucket, Key=keys[0],
                           Body=ndjson(view.price_rows(period)),
                           ContentType="application/x-ndjson")
        return keys[0]

    def write_hour(self, hour: str) -> tuple[str, PeriodViews, int]:
        view, bad = self.compute_hour(hour)
        return self._write(hour_view_keys(hour), hour, view), view, bad

    def write_day(self, day: str) -> str | None:
        """The day's view from its 24 hour views; None while any hour has none."""
        total = PeriodViews.empty()
        for hour in hours_of_day(day):
            view = self.hour_view(hour)
            if view is None:
                return None
            total = total.merge(view)
        return self._write(day_view_keys(day), day, total)

    # -- the speed layer, for comparison --------------------------------------------------

    def differences(self, hour: str, view: PeriodViews) -> int:
        """Markets x tokens of ``hour`` where the speed layer's aggregate differs from the
        batch view (or is missing: expired, or never counted)."""
        differ = 0
        for market in sorted({market for market, _ in view.prices}):
            items = self.state.dynamodb.query(
                TableName=self.state.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
                ExpressionAttributeValues={":pk": {"S": f"market#{market}"},
                                           ":sk": {"S": f"hour#{hour}#"}})["Items"]
            speed = {item["token_id"]["S"]: aggregate_from_item(item)[0] for item in items}
            for (m, token), (_, agg) in view.prices.items():
                if m == market and speed.get(token) != agg:
                    differ += 1
        return differ


@dataclass
class CloseReport:
    written: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # closable by time, archive behind
    bad_lines: int = 0
    differences: int = 0
    archive_lag_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {"ClosedPeriods": len(self.written), "DeferredHours": len(self.deferred),
                "BadArchiveLines": self.bad_lines, "BatchSpeedDifferences": self.differences,
                "ArchiveLagSeconds": self.archive_lag_s}


def closed_hour(now: datetime, lateness_hours: int) -> str:
    """The newest hour whose end is at least the allowed lateness behind ``now``."""
    end = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=lateness_hours)
    return hour_of(end - timedelta(hours=1))


def _span(first: datetime, last: datetime) -> list[str]:
    hours, moment = [], first
    while moment <= last:
        hours.append(hour_of(moment))
        moment += timedelta(hours=1)
    return hours


def hours_between(start: str, end: str) -> list[str]:
    """Every hour from ``start`` to ``end`` inclusive; each a day (YYYY-MM-DD) or an hour."""
    def bound(text: str, last: bool) -> datetime:
        if len(text) == 10:
            return parse_day(text) + (timedelta(hours=23) if last else timedelta())
        return parse_hour(text)

    first, final = bound(start, False), bound(end, True)
    if final < first:
        raise ValueError(f"--from {start} is after --to {end}")
    if final - first > timedelta(days=366):
        raise ValueError("recompute at most a year per call")
    return _span(first, final)


def _close_hours(layer: BatchLayer, hours: Sequence[str], report: CloseReport,
                 versions: Mapping[str, int]) -> None:
    """Day by day: write the hours, then the day if every other hour of it has a clean
    view, and only then clear the hours' dirty marks — a run cut short (a timeout) leaves
    them dirty, so the next run rewrites hour and day together."""
    by_day: dict[str, list[str]] = {}
    for hour in hours:
        by_day.setdefault(hour[:10], []).append(hour)
    for day, day_hours in sorted(by_day.items()):
        for hour in day_hours:
            key, view, bad = layer.write_hour(hour)
            report.written.append(key)
            report.bad_lines += bad
            report.differences += layer.differences(hour, view)
        dirty = layer.state.dirty()
        # dirty hours of the day other than those just written from the marks read
        others = [h for h in hours_of_day(day) if h in dirty
                  and not (h in day_hours and versions.get(h) == dirty[h].version)]
        if not others:
            written = layer.write_day(day)
            if written is not None:
                report.written.append(written)
        for hour in day_hours:
            if hour in versions:
                layer.state.clear_dirty(hour, versions[hour])


def recompute(layer: BatchLayer, hours: Sequence[str]) -> CloseReport:
    """Backfill: write ``hours`` (and their complete days) from the archive now."""
    report = CloseReport()
    dirty = layer.state.dirty()
    _close_hours(layer, hours, report, {h: d.version for h, d in dirty.items() if h in hours})
    return report


def close(layer: BatchLayer, now: datetime) -> CloseReport:
    """The scheduled close: dirty hours and view-less hours of the sweep window that are
    closable by time and covered by the archive."""
    config = layer.config
    report = CloseReport()
    last = parse_hour(closed_hour(now, config.lateness_hours))
    dirty = layer.state.dirty()
    window = _span(last - timedelta(hours=max(config.sweep_hours - 1, 0)), last)
    with_views: set[str] = set()
    for day in sorted({hour[:10] for hour in window}):
        with_views |= layer.hours_with_views(day)
    candidates = sorted({h for h in dirty if parse_hour(h) <= last}
                        | {h for h in window if h not in with_views})
    archive, speed = layer.state.progress("archive"), layer.state.progress("speed")
    lag_ms = max([speed[g].ts_ms - archive[g].ts_ms for g in speed
                  if g in archive and archive[g].offset < speed[g].offset] + [0])
    report.archive_lag_s = lag_ms / 1000
    ready: list[str] = []
    for hour in candidates:
        closes = hour_end(hour) + timedelta(hours=config.lateness_hours)
        behind = covered(int(closes.timestamp() * 1000), archive, speed)
        needs = dirty[hour].required if hour in dirty else {}
        behind += [g for g, offset in needs.items()
                   if g not in archive or archive[g].offset < offset]
        if behind:
            report.deferred.append(hour)
        else:
            ready.append(hour)
    _close_hours(layer, ready, report, {h: dirty[h].version for h in ready if h in dirty})
    return report


def close_periods(layer: BatchLayer, event: Mapping[str, Any]) -> CloseReport:
    if event.get("from") or event.get("to"):
        start = str(event.get("from") or event.get("to"))
        return recompute(layer, hours_between(start, str(event.get("to") or start)))
    if event.get("day"):
        return recompute(layer, hours_of_day(str(event["day"])))
    if event.get("hour"):
        return recompute(layer, [hour_of(parse_hour(str(event["hour"])))])
    when = str(event.get("time") or "")
    try:
        now = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"event time {when!r} is not ISO-8601: pass an EventBridge "
                         "scheduled event, or {\"hour\": ...}, {\"day\": ...} or "
                         "{\"from\": ..., \"to\": ...}") from exc
    return close(layer, now if now.tzinfo else now.replace(tzinfo=timezone.utc))


def layer_from_env(env: Mapping[str, str] | None = None, *, bucket: str | None = None,
                   table: str | None = None,
                   log: Callable[[dict[str, Any]], None] = log_json) -> BatchLayer:
    config = ViewsConfig.from_env(os.environ if env is None else env)
    s3 = boto3.client("s3")
    bucket = bucket or config.require("VIEWS_BUCKET")
    state = ViewsState(table or config.require("VIEWS_TABLE"), boto3.client("dynamodb"))
    return BatchLayer(bucket, s3, config, state, Quarantine(bucket, s3, log))


def archive_handler(event: Any, context: Any) -> dict[str, Any]:
    layer = layer_from_env()
    batch = parse_event(event)
    for bad in batch.malformed:
        layer.quarantine.put(bad, bad.reason)
    done = layer.archive(batch.records)
    closed = datetime.now(timezone.utc) - timedelta(hours=layer.config.lateness_hours)
    late = sum(1 for hour in done.hours if hour_end(hour) <= closed)
    log_json({"event": "views.archive", "records": len(batch.records),
              "objects": len(done.keys), "poison": len(batch.malformed) + done.poison})
    Metrics("archive").emit({"PoisonRecords": len(batch.malformed) + done.poison,
                             "HoursAfterClose": late})
    return {"batchItemFailures": []}


def close_handler(event: Any, context: Any) -> dict[str, Any]:
    layer = layer_from_env()
    report = close_periods(layer, event if isinstance(event, Mapping) else {})
    log_json({"event": "views.close", "written": report.written, "deferred": report.deferred,
              "bad_lines": report.bad_lines, "differences": report.differences})
    Metrics("close").emit(report.metrics(), units={"ArchiveLagSeconds": "Seconds"})
    return {"written": report.written, "deferred": report.deferred}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Recompute batch views from the archive "
                                     "(idempotent): every hour from --from to --to.")
    parser.add_argument("--from", dest="start", required=True,
                        help="YYYY-MM-DD or YYYY-MM-DDTHH (UTC)")
    parser.add_argument("--to", dest="end", help="YYYY-MM-DD or YYYY-MM-DDTHH (default: --from)")
    parser.add_argument("--bucket", help="S3 bucket (default VIEWS_BUCKET)")
    parser.add_argument("--table", help="DynamoDB table (default VIEWS_TABLE)")
    args = parser.parse_args(argv)
    try:
        layer = layer_from_env(bucket=args.bucket, table=args.table)
        report = recompute(layer, hours_between(args.start, args.end or args.start))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(report.written)} views written, {report.bad_lines} unreadable archive lines "
          f"quarantined, {report.differences} differences from the speed layer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

