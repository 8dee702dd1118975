"""Speed layer: a Kafka event source mapping consumer upserting hour views in DynamoDB.

``views_speed.handler`` consumes ``polymarket.price_hourly`` (per market and outcome token:
count, sum, min, max, last by ts, average per hour) and ``rss.events`` (items per feed per
hour). Delivery is at least once, so every counted record writes a *seen*
item keyed by its identity (see ``views_model``) in the same ``TransactWriteItems`` as its
aggregates, on condition that the seen item does not exist yet: a redelivered record, or
one the relay produced twice, cancels its own transaction and counts once. Aggregates are
read, recomputed and written back on condition that their ``version`` is unchanged
(min/max/last need a read; the condition makes concurrent writers retry, not overwrite).

Failures: a poison record (undecodable, missing fields) is written to
``s3://VIEWS_BUCKET/failures/poison/...`` and not retried. Any other error for a record
(throttling, conflicts past the retry budget) stops that partition there: the response
names it in ``batchItemFailures`` (``{"itemIdentifier": {"partition": "<topic>-<partition>",
"offset": N}}``, the partition as the event's ``records`` key) so the
mapping retries from it; after the mapping's retries its on-failure destination gets it.
With ``VIEWS_PARTIAL_BATCH_RESPONSE=false`` (a mapping not in provisioned mode, which
ignores partial responses) the invocation fails instead and the whole batch is retried.

A record for an hour that may already have closed (its end plus ``VIEWS_LATENESS_HOURS``
has passed) is counted as usual and marks the hour dirty with its position (once per hour
and partition per batch), so the next close recomputes the hour once the archive has
reached it (see ``views_state``).

Table (``VIEWS_TABLE``): string keys ``pk`` / ``sk``::

    market#<market_id>  hour#<YYYY-MM-DDTHH>#<token_id>   (TTL expires_at, VIEWS_SPEED_TTL_DAYS
    feeds               hour#<YYYY-MM-DDTHH>#<source>      after the hour closed)
    seen#<identity>     seen                     (position, relay_id; TTL VIEWS_DEDUPE_TTL_DAYS)

A day is the sum of its hours (a feed item counts once, in one hour), so there are no
day items: serving adds the hours up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import boto3
from botocore.exceptions import ClientError
from views_event import (
    KafkaBatch,
    KafkaRecord,
    Malformed,
    by_partition,
    parse_event,
    to_event_record,
)
from views_model import (
    Aggregate,
    FeedItem,
    PoisonRecord,
    PricePoint,
    ViewsConfig,
    decode_feed_item,
    decode_price,
    hour_end,
)
from views_state import Metrics, ViewsState

MAX_ATTEMPTS = 5
LATE_MARGIN_S = 300
CANCELLED = "TransactionCanceledException"


class TransientFailure(RuntimeError):
    """The record could not be stored now; the mapping should retry it."""


class BatchFailed(RuntimeError):
    """Raised instead of a partial batch response when the mapping does not take one."""


def _num(value: Decimal | None) -> dict[str, str] | None:
    return None if value is None else {"N": str(value)}


def aggregate_from_item(item: Mapping[str, Any] | None) -> tuple[Aggregate, int | None]:
    if not item:
        return Aggregate(), None

    def dec(name: str) -> Decimal | None:
        return Decimal(item[name]["N"]) if name in item else None

    agg = Aggregate(count=int(item["count"]["N"]), total=Decimal(item["sum"]["N"]),
                    low=dec("min"), high=dec("max"), last_price=dec("last"),
                    last_ts=item.get("last_ts", {}).get("S", ""),
                    last_id=item.get("last_id", {}).get("S", ""))
    return agg, int(item["version"]["N"])


@dataclass
class SpeedStore:
    """The DynamoDB side: one transaction per counted record."""

    table: str
    dynamodb: Any
    config: ViewsConfig
    clock: Callable[[], float] = time.time

    def _expiry(self, hour: str) -> dict[str, dict[str, str]]:
        """An hour's aggregates go ``VIEWS_SPEED_TTL_DAYS`` after the hour closed or after
        they were last written, whichever is later (an old hour being replayed is served
        from them until its batch view is recomputed); 0 keeps them."""
        if self.config.speed_ttl_days == 0:
            return {}
        closes = hour_end(hour).timestamp() + self.config.lateness_hours * 3600
        base = max(closes, self.clock())
        return {"expires_at": {"N": str(int(base) + self.config.speed_ttl_days * 86400)}}

    def is_late(self, hour: str) -> bool:
        """Whether ``hour`` may already have been closed (a few minutes' margin for the
        close running at the same moment)."""
        closes = hour_end(hour).timestamp() + self.config.lateness_hours * 3600
        return self.clock() + LATE_MARGIN_S >= closes

    def _seen_put(self, identity: str, record: KafkaRecord) -> dict[str, Any]:
        item = {"pk": {"S": f"seen#{identity}"}, "sk": {"S": "seen"},
                "position": {"S": record.position}, "relay_id": {"S": record.identity}}
        expires = self.config.dedupe_expiry(self.clock())
        if expires is not None:
            item["expires_at"] = {"N": str(expires)}
        return {"Put": {"TableName": self.table, "Item": item,
                        "ConditionExpression": "attribute_not_exists(pk)"}}

    def _seen(self, identity: str) -> bool:
        found = self.dynamodb.get_item(
            TableName=self.table, ConsistentRead=True,
            Key={"pk": {"S": f"seen#{identity}"}, "sk": {"S": "seen"}})
        return "Item" in found

    def _agg_put(self, key: dict[str, Any], agg: Aggregate, version: int | None,
                 point: PricePoint) -> dict[str, Any]:
        item: dict[str, Any] = {
            **key, "count": {"N": str(agg.count)}, "sum": {"N": str(agg.total)},
            "last_ts": {"S": agg.last_ts}, "last_id": {"S": agg.last_id},
            "market_id": {"S": point.market_id}, "token_id": {"S": point.token_id},
            "outcome": {"S": point.outcome}, "question": {"S": point.question},
            "period": {"S": "hour"}, "version": {"N": str((version or 0) + 1)},
            **self._expiry(point.hour),
        }
        for name, value in (("min", agg.low), ("max", agg.high), ("last", agg.last_price),
                            ("average", agg.average)):
            if value is not None:
                item[name] = _num(value)
        put: dict[str, Any] = {"TableName": self.table, "Item": item}
        if version is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "version = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(version)}}
        return {"Put": put}

    def _transact(self, items: list[dict[str, Any]], identity: str) -> bool:
        """True when written, False when the seen item already existed (a duplicate)."""
        try:
            self.dynamodb.transact_write_items(TransactItems=items)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != CANCELLED:
                raise TransientFailure(f"DynamoDB refused the write: {exc}") from exc
        if self._seen(identity):
            return False
        raise _Conflict

    def add_price(self, point: PricePoint, record: KafkaRecord) -> bool:
        """Count ``point`` once in its hour's aggregate; False for a duplicate."""
        key = {"pk": {"S": f"market#{point.market_id}"},
               "sk": {"S": f"hour#{point.hour}#{point.token_id}"}}
        for _attempt in range(MAX_ATTEMPTS):
            current = self.dynamodb.get_item(TableName=self.table, Key=key,
                                             ConsistentRead=True).get("Item")
            agg, version = aggregate_from_item(current)
            writes = [self._seen_put(point.identity, record),
                      self._agg_put(key, agg.add(point), version, point)]
            try:
                return self._transact(writes, point.identity)
            except _Conflict:
                continue  # another writer moved the aggregate on: read again
        raise TransientFailure(f"{point.identity}: aggregates kept changing under "
                               f"{MAX_ATTEMPTS} attempts")

    def add_feed_item(self, item: FeedItem, record: KafkaRecord) -> bool:
        values: dict[str, Any] = {":one": {"N": "1"}, ":p": {"S": "hour"},
                                  ":s": {"S": item.source}}
        expression = "ADD #c :one SET period = :p, #src = :s"
        expiry = self._expiry(item.hour)
        if expiry:
            values[":e"] = expiry["expires_at"]
            expression += ", expires_at = :e"
        writes = [self._seen_put(item.identity, record), {"Update": {
            "TableName": self.table,
            "Key": {"pk": {"S": "feeds"}, "sk": {"S": f"hour#{item.hour}#{item.source}"}},
            "UpdateExpression": expression,
            "ExpressionAttributeNames": {"#c": "count", "#src": "source"},
            "ExpressionAttributeValues": values,
        }}]
        for _attempt in range(MAX_ATTEMPTS):
            try:
                return self._transact(writes, item.identity)
            except _Conflict:
                continue
        raise TransientFailure(f"{item.identity}: transaction kept being cancelled")


class _Conflict(Exception):
    """A transaction lost a race on an aggregate's version."""


@dataclass
class Quarantine:
    """Where poison records go: ``s3://bucket/failures/poison/...`` (deterministic keys)."""

    bucket: str | None
    s3: Any
    log: Callable[[dict[str, Any]], None]

    def put(self, where: KafkaRecord | Malformed, reason: str) -> None:
        raw = to_event_record(where) if isinstance(where, KafkaRecord) else where.raw
        entry = {"reason": reason, "topic": where.topic, "partition": where.partition,
                 "offset": where.offset, "record": raw}
        self.log({"event": "views.poison", **{k: v for k, v in entry.items() if k != "record"}})
        if self.bucket:
            key = (f"failures/poison/topic={where.topic}/partition={where.partition}/"
                   f"offset={where.offset}.json")
            self.s3.put_object(Bucket=self.bucket, Key=key,
                               Body=json.dumps(entry, sort_keys=True).encode())

    def put_line(self, key: str, number: int, line: bytes, reason: str) -> None:
        """An archive line the close cannot read: kept under ``failures/archive/`` and
        logged, so the hour still closes and the line can be looked at."""
        self.log({"event": "views.bad_archive_line", "object": key, "line": number,
                  "reason": reason})
        if self.bucket:
            self.s3.put_object(
                Bucket=self.bucket, Key=f"failures/archive/{key}/line={number}.json",
                Body=json.dumps({"reason": reason, "object": key, "line": number,
                                 "text": line.decode("utf-8", "replace")},
                                sort_keys=True).encode())

    def put_object(self, key: str, body: bytes, reason: str) -> None:
        """An archive object the close cannot read (truncated Parquet, other columns): a
        copy kept under ``failures/archive/`` and logged, so the hour still closes."""
        self.log({"event": "views.bad_archive_object", "object": key, "reason": reason})
        if self.bucket:
            self.s3.put_object(Bucket=self.bucket, Key=f"failures/archive/{key}", Body=body,
                               Metadata={"reason": ascii(reason[:1024])})


@dataclass
class Outcome:
    counted: int = 0
    duplicates: int = 0
    poison: int = 0
    skipped: int = 0
    late: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


def _count(record: KafkaRecord, store: SpeedStore, config: ViewsConfig
           ) -> tuple[bool, str] | None:
    """(added, hour) for a price or feed record; None for another topic."""
    if record.topic == config.price_topic:
        point = decode_price(record)
        return store.add_price(point, record), point.hour
    if record.topic == config.rss_topic:
        item = decode_feed_item(record)
        return store.add_feed_item(item, record), item.hour
    return None


def consume(batch: KafkaBatch, *, store: SpeedStore, quarantine: Quarantine,
            config: ViewsConfig, state: ViewsState | None = None) -> Outcome:
    """Count the batch partition by partition; then, per partition, mark each hour that may
    already have closed dirty with the highest offset counted for it (a retried batch marks
    again, so a mark cannot be lost between counting and marking) and record progress."""
    state = state or ViewsState(store.table, store.dynamodb)
    outcome = Outcome()
    for bad in batch.malformed:
        quarantine.put(bad, bad.reason)
        outcome.poison += 1
    for records in by_partition(batch.records):
        done: KafkaRecord | None = None
        late: dict[str, int] = {}
        for record in records:
            try:
                result = _count(record, store, config)
            except PoisonRecord as exc:
                quarantine.put(record, str(exc))
                outcome.poison += 1
                done = record
                continue
            except (TransientFailure, ClientError) as exc:
                # Stop this partition here: the mapping retries from this offset, so no
                # later record of the partition is counted before it.
                outcome.failures.append({"itemIdentifier": record.item_identifier()})
                quarantine.log({"event": "views.retry", "position": record.position,
                                "error": str(exc)})
                break
            done = record
            if result is None:
                outcome.skipped += 1
                continue
            added, hour = result
            if store.is_late(hour):
                late[hour] = record.offset
                outcome.late += added
            if added:
                outcome.counted += 1
            else:
                outcome.duplicates += 1
        for hour, offset in sorted(late.items()):
            state.mark_dirty(hour, group=records[0].group, offset=offset)
        if done is not None:
            state.advance("speed", done.group, done.offset, done.timestamp_ms)
    return outcome


def log_json(entry: dict[str, Any]) -> None:
    print(json.dumps(entry, sort_keys=True, default=str), file=sys.stdout, flush=True)


@dataclass
class _Runtime:
    config: ViewsConfig
    store: SpeedStore
    quarantine: Quarantine
    state: ViewsState


_RUNTIME: _Runtime | None = None


def _runtime(env: Mapping[str, str] | None = None) -> _Runtime:
    """Built once per execution environment: config from the environment, boto3 clients."""
    global _RUNTIME  # noqa: PLW0603 - warm invocations reuse the clients
    if _RUNTIME is None:
        config = ViewsConfig.from_env(os.environ if env is None else env)
        dynamodb = boto3.client("dynamodb")
        store = SpeedStore(config.require("VIEWS_TABLE"), dynamodb, config)
        _RUNTIME = _Runtime(config, store, Quarantine(config.bucket, boto3.client("s3"),
                                                      log_json),
                            ViewsState(store.table, dynamodb))
    return _RUNTIME


def handler(event: Any, context: Any) -> dict[str, Any]:
    runtime = _runtime()
    batch = parse_event(event)
    outcome = consume(batch, store=runtime.store, quarantine=runtime.quarantine,
                      config=runtime.config, state=runtime.state)
    log_json({"event": "views.speed", "source": batch.source, "records": len(batch.records),
              "counted": outcome.counted, "duplicates": outcome.duplicates,
              "poison": outcome.poison, "skipped": outcome.skipped, "late": outcome.late,
              "failed": len(outcome.failures)})
    Metrics("speed").emit({"RecordsAfterClose": outcome.late, "PoisonRecords": outcome.poison,
                           "Duplicates": outcome.duplicates})
    if outcome.failures and not runtime.config.partial_batch_response:
        # On-demand Kafka mappings ignore batchItemFailures: fail the invocation so the
        # whole batch is retried (what was counted is recognised as a duplicate).
        raise BatchFailed(f"{len(outcome.failures)} partition(s) failed at "
                          f"{outcome.failures}; retrying the batch")
    return {"batchItemFailures": outcome.failures}
