"""Batch layer: archive records to S3 by the minute, and compute hour and day views from S3.

``views_batch.archive_handler`` (a second Kafka event source mapping on the same topics,
its own consumer group) lands each batch as NDJSON of the event-source records, split by
the minute the records happened in (a price's ``ts``, a feed item's ``fetched_at``; the
Kafka timestamp for anything that does not decode), like Firehose's minute files::

    archive/topic=<t>/dt=YYYY-MM-DD/hour=HH/minute=MM/<partition>-<firstOffset>-<lastOffset>.ndjson

Names are deterministic, so a redelivered batch overwrites its object; a batch redelivered
with other boundaries overlaps an older object, which the views tolerate (raw records are
deduplicated by topic-partition-offset, then by identity as in the speed layer).

``views_batch.close_handler`` (an hourly EventBridge schedule) computes the view of the
hour that just closed — the last hour whose end is ``VIEWS_LATENESS_HOURS`` behind, so
records produced late (a producer filling in a missed run) are in — from that hour's
prefixes, writes ``views/hour/dt=D/hour=HH.json``, and after hour 23 merges the day's 24
hour views into ``views/day/dt=D.json``. ``{"hour": "2026-11-28T10"}`` or
``{"day": "2026-11-28"}`` recomputes one period (backfill, or after records later than the
lateness). Recomputing is deterministic: same archive, same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import boto3
from views_event import KafkaRecord, parse_event, parse_record, to_event_record
from views_model import (
    DAY_FORMAT,
    PeriodViews,
    ViewsConfig,
    compute_views,
    day_of,
    decode_all,
    event_time,
    hour_of,
    parse_day,
    parse_hour,
)
from views_speed import Quarantine, log_json

ARCHIVE = "archive"


def archive_objects(records: tuple[KafkaRecord, ...], config: ViewsConfig) -> dict[str, bytes]:
    """Object key -> NDJSON body: one object per topic, partition and event minute."""
    groups: dict[tuple[str, int, str], list[KafkaRecord]] = {}
    for record in records:
        minute = f"{event_time(record, config):dt=%Y-%m-%d/hour=%H/minute=%M}"
        groups.setdefault((record.topic, record.partition, minute), []).append(record)
    objects: dict[str, bytes] = {}
    for (topic, partition, minute), group in groups.items():
        group.sort(key=lambda r: r.offset)
        key = (f"{ARCHIVE}/topic={topic}/{minute}/"
               f"{partition}-{group[0].offset}-{group[-1].offset}.ndjson")
        objects[key] = b"".join(
            json.dumps(to_event_record(r), sort_keys=True).encode() + b"\n" for r in group)
    return objects


def hour_view_key(hour: str) -> str:
    return f"views/hour/dt={hour[:10]}/hour={hour[11:13]}.json"


def day_view_key(day: str) -> str:
    return f"views/day/dt={day}.json"


@dataclass
class BatchLayer:
    bucket: str
    s3: Any
    config: ViewsConfig

    def archive(self, records: tuple[KafkaRecord, ...]) -> list[str]:
        objects = archive_objects(records, self.config)
        for key, body in sorted(objects.items()):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                               ContentType="application/x-ndjson")
        return sorted(objects)

    def _keys(self, prefix: str) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield str(entry["Key"])

    def archived(self, hour: str) -> list[KafkaRecord]:
        """Every archived price and RSS record of event hour ``hour``, once per
        topic-partition-offset, in a fixed order."""
        moment = parse_hour(hour)
        seen: dict[str, KafkaRecord] = {}
        for topic in (self.config.price_topic, self.config.rss_topic):
            prefix = f"{ARCHIVE}/topic={topic}/dt={moment:%Y-%m-%d}/hour={moment:%H}/"
            for key in sorted(self._keys(prefix)):
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                for line in body.splitlines():
                    parsed = parse_record(json.loads(line), f"{topic}-0")
                    if isinstance(parsed, KafkaRecord):
                        seen.setdefault(parsed.position, parsed)
        return sorted(seen.values(), key=lambda r: (r.topic, r.partition, r.offset))

    def compute_hour(self, hour: str) -> PeriodViews:
        records = self.archived(hour)
        views = compute_views(decode_all(records, self.config), period="hour")
        return views.get(hour, PeriodViews.empty())

    def write_hour(self, hour: str) -> str:
        view = self.compute_hour(hour)
        return self._write(hour_view_key(hour), "hour", hour, view)

    def read_view(self, key: str) -> PeriodViews | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return PeriodViews.from_json(json.loads(body))

    def write_day(self, day: str) -> str:
        start = parse_day(day)
        total = PeriodViews.empty()
        for step in range(24):
            hour = hour_of(start + timedelta(hours=step))
            view = self.read_view(hour_view_key(hour))
            total = total.merge(view if view is not None else self.compute_hour(hour))
        return self._write(day_view_key(day), "day", day, total)

    def _write(self, key: str, kind: str, period: str, view: PeriodViews) -> str:
        body = {"kind": kind, "period": period, **view.to_json()}
        self.s3.put_object(Bucket=self.bucket, Key=key, ContentType="application/json",
                           Body=json.dumps(body, sort_keys=True, indent=1).encode())
        return key


def closed_hour(now: datetime, lateness_hours: int) -> str:
    """The newest hour whose end is at least the allowed lateness behind ``now``."""
    end = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=lateness_hours)
    return hour_of(end - timedelta(hours=1))


def close_periods(layer: BatchLayer, event: Mapping[str, Any]) -> list[str]:
    if event.get("day"):
        return [layer.write_day(str(event["day"]))]
    if event.get("hour"):
        return [layer.write_hour(str(event["hour"]))]
    when = str(event.get("time") or "")
    try:
        now = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"event time {when!r} is not ISO-8601: pass an EventBridge "
                         "scheduled event, or {\"hour\": ...} / {\"day\": ...}") from exc
    hour = closed_hour(now, layer.config.lateness_hours)
    written = [layer.write_hour(hour)]
    if hour.endswith("T23"):
        written.append(layer.write_day(day_of(datetime.strptime(hour[:10], DAY_FORMAT))))
    return written


def _layer(env: Mapping[str, str] | None = None) -> tuple[BatchLayer, Quarantine]:
    config = ViewsConfig.from_env(os.environ if env is None else env)
    s3 = boto3.client("s3")
    return BatchLayer(config.require("VIEWS_BUCKET"), s3, config), Quarantine(
        config.bucket, s3, log_json)


def archive_handler(event: Any, context: Any) -> dict[str, Any]:
    layer, quarantine = _layer()
    batch = parse_event(event)
    for bad in batch.malformed:
        quarantine.put(bad, bad.reason)
    keys = layer.archive(batch.records)
    log_json({"event": "views.archive", "records": len(batch.records), "objects": len(keys),
          "poison": len(batch.malformed)})
    return {"batchItemFailures": []}


def close_handler(event: Any, context: Any) -> dict[str, Any]:
    layer, _ = _layer()
    written = close_periods(layer, event if isinstance(event, Mapping) else {})
    log_json({"event": "views.close", "written": written})
    return {"written": written}
