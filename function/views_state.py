"""What the layers tell each other through the views table: dirty hours, consumer progress,
feed-item claims, and the metrics they emit.

Items (``pk`` / ``sk``)::

    dirty                 hour#<YYYY-MM-DDTHH>    version (ADD 1 per mark); p_<topic-partition>:
                                                  the highest offset the speed layer counted
                                                  late for the hour (the archive must reach it)
    progress#<consumer>   <topic>-<partition>     offset, ts (Kafka timestamp, ms)
    claim#<identity>      claim                   position, hour (the feed item's counting hour)

* **Dirty.** Every hour the archive writes, and every hour the speed layer counts a record
  for after it closed, is marked dirty; the close recomputes dirty hours and removes the mark
  only if nobody marked it again meanwhile (condition on ``version``).
* **Progress.** Each consumer records, per topic-partition, the highest offset it has
  finished and that record's Kafka timestamp: the close compares the archive's against the
  speed layer's to decide whether the archive has caught up past an hour.
* **Claims.** A feed item is counted once across hours, in the hour of the first record the
  archive saw of it (per partition that is the lowest offset, as in the speed layer).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

NAMESPACE = "kafka-relay/views"
CONDITION_FAILED = "ConditionalCheckFailedException"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class Progress:
    offset: int
    ts_ms: int


@dataclass(frozen=True)
class Dirty:
    version: int
    required: dict[str, int]  # topic-partition -> offset the archive must have reached


@dataclass
class ViewsState:
    table: str
    dynamodb: Any

    def _query(self, pk: str) -> Iterable[dict[str, Any]]:
        paginator = self.dynamodb.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table, ConsistentRead=True,
            KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": pk}},
        ):
            yield from page.get("Items", [])

    # -- dirty hours --------------------------------------------------------------------

    def mark_dirty(self, hour: str, *, group: str | None = None, offset: int = -1) -> None:
        """Mark ``hour`` for recomputation; with ``group``, the archive must reach
        ``offset`` in that topic-partition before the mark can be cleared."""
        names = {"#v": "version"}
        values: dict[str, Any] = {":one": {"N": "1"}}
        expression = "ADD #v :one"
        if group is not None:
            names["#p"] = f"p_{group}"
            values[":o"] = {"N": str(offset)}
            expression += " SET #p = :o"
        self.dynamodb.update_item(
            TableName=self.table, Key={"pk": {"S": "dirty"}, "sk": {"S": f"hour#{hour}"}},
            UpdateExpression=expression, ExpressionAttributeNames=names,
            ExpressionAttributeValues=values)

    def dirty(self) -> dict[str, Dirty]:
        found: dict[str, Dirty] = {}
        for item in self._query("dirty"):
            required = {name[2:]: int(value["N"]) for name, value in item.items()
                        if name.startswith("p_")}
            found[item["sk"]["S"][5:]] = Dirty(int(item["version"]["N"]), required)
        return found

    def clear_dirty(self, hour: str, version: int) -> bool:
        """False when the hour was marked again since ``version`` was read."""
        try:
            self.dynamodb.delete_item(
                TableName=self.table, Key={"pk": {"S": "dirty"}, "sk": {"S": f"hour#{hour}"}},
                ConditionExpression="version = :v",
                ExpressionAttributeValues={":v": {"N": str(version)}})
        except ClientError as exc:
            if _code(exc) != CONDITION_FAILED:
                raise
            return False
        return True

    # -- consumer progress ----------------------------------------------------------------

    def advance(self, consumer: str, group: str, offset: int, ts_ms: int) -> None:
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"progress#{consumer}"}, "sk": {"S": group}},
                UpdateExpression="SET #o = :o, #t = :t",
                ConditionExpression="attribute_not_exists(#o) OR #o < :o",
                ExpressionAttributeNames={"#o": "offset", "#t": "ts"},
                ExpressionAttributeValues={":o": {"N": str(offset)}, ":t": {"N": str(ts_ms)}})
        except ClientError as exc:
            if _code(exc) != CONDITION_FAILED:  # a redelivery of older offsets
                raise

    def progress(self, consumer: str) -> dict[str, Progress]:
        return {item["sk"]["S"]: Progress(int(item["offset"]["N"]), int(item["ts"]["N"]))
                for item in self._query(f"progress#{consumer}")}

    # -- feed-item claims -----------------------------------------------------------------

    def claim(self, identity: str, position: str, hour: str, expires_at: int | None) -> bool:
        """True when ``position`` is the record that counts for ``identity``."""
        item = {"pk": {"S": f"claim#{identity}"}, "sk": {"S": "claim"},
                "position": {"S": position}, "hour": {"S": hour}}
        if expires_at is not None:
            item["expires_at"] = {"N": str(expires_at)}
        try:
            self.dynamodb.put_item(TableName=self.table, Item=item,
                                   ConditionExpression="attribute_not_exists(pk)")
            return True
        except ClientError as exc:
            if _code(exc) != CONDITION_FAILED:
                raise
        found = self.dynamodb.get_item(
            TableName=self.table, ConsistentRead=True,
            Key={"pk": {"S": f"claim#{identity}"}, "sk": {"S": "claim"}}).get("Item", {})
        return bool(found.get("position", {}).get("S") == position)


def covered(end_ms: int, archive: Mapping[str, Progress], speed: Mapping[str, Progress]
            ) -> list[str]:
    """The topic-partitions where the archive has not caught up past ``end_ms`` (empty: the
    hour can close). Caught up: the archive has read a record produced at or after
    ``end_ms``, or has reached the speed layer's offset; a partition only the speed layer
    knows is behind."""
    behind = []
    for group in sorted(set(archive) | set(speed)):
        mine, theirs = archive.get(group), speed.get(group)
        caught_up = mine is not None and (
            mine.ts_ms >= end_ms or theirs is None or mine.offset >= theirs.offset)
        if not caught_up:
            behind.append(group)
    return behind


@dataclass
class Metrics:
    """CloudWatch embedded metric format: one JSON log line per invocation."""

    function: str
    write: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stdout,
                                                                   flush=True))
    clock: Callable[[], float] = time.time

    def emit(self, values: Mapping[str, float], unit: str = "Count",
             units: Mapping[str, str] | None = None) -> None:
        units = units or {}
        self.write(json.dumps({
            "_aws": {"Timestamp": int(self.clock() * 1000), "CloudWatchMetrics": [{
                "Namespace": NAMESPACE, "Dimensions": [["Function"]],
                "Metrics": [{"Name": name, "Unit": units.get(name, unit)}
                            for name in sorted(values)]}]},
            "Function": self.function, **values}, sort_keys=True))
