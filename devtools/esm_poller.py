"""A local stand-in for Lambda's Kafka event source mapping: poll topics, invoke a function.

Reads each topic from the beginning with a confluent-kafka ``Consumer`` and ``assign()``
(no group join: Tansu, the local broker, is slow to rebalance), gathers up to
``batch_size`` records or whatever arrived within ``window_s`` of a batch's first record,
and invokes the function with an event shaped like the real mapping's (self-managed or
MSK; one mapping reads one topic, so a batch holds one topic). It honours the function's
answer as the mapping does:

* an error: the whole batch is retried;
* ``{"batchItemFailures": [{"itemIdentifier": {"partition": "t-p", "offset": o}}]}``: the
  records of topic-partition ``t-p`` (the event's ``records`` key) from offset ``o`` on are
  retried, the rest are done; a malformed identifier retries the whole batch;
* after ``max_retries`` retries what still fails goes to ``on_failure`` (the mapping's
  on-failure destination) and polling moves on.

It stops once every partition reached its end and nothing new came for ``idle_s`` (the
broker's watermarks are not trusted: records are counted by reading until idle), or at
``timeout_s``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

SELF_MANAGED = "SelfManagedKafka"
MSK = "aws:kafka"
LOCAL_MSK_ARN = "arn:aws:kafka:us-east-1:123456789012:cluster/local/00000000-0000-0000"

#: What the poller needs of an invocation: (ok, payload). ``ok`` False is a function error.
Invoke = Callable[[dict[str, Any]], tuple[bool, Any]]
OnFailure = Callable[[dict[str, Any], str], None]


def event_record(msg: Message) -> dict[str, Any]:
    """One consumed message as the mapping puts it in the event."""
    kind, ts = msg.timestamp()
    key, value = msg.key(), msg.value()
    return {
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "timestamp": ts, "timestampType": "LOG_APPEND_TIME" if kind == 2 else "CREATE_TIME",
        "key": None if key is None else base64.b64encode(bytes(key)).decode(),
        "value": None if value is None else base64.b64encode(bytes(value)).decode(),
        "headers": [{str(pair[0]): list(_bytes(pair[1]))} for pair in (msg.headers() or [])],
    }


def _bytes(data: object) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else bytes(data)  # type: ignore[call-overload]


def mapping_event(records: list[dict[str, Any]], *, source: str, bootstrap: str
                  ) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(f"{record['topic']}-{record['partition']}", []).append(record)
    event: dict[str, Any] = {"eventSource": source, "bootstrapServers": bootstrap,
                             "records": groups}
    if source == MSK:
        event["eventSourceArn"] = LOCAL_MSK_ARN
    return event


def still_failing(records: list[dict[str, Any]], answer: Any) -> list[dict[str, Any]]:
    """The records the function's partial batch response asks to retry.

    The identifier is AWS's Kafka item identifier: ``{"partition": "<topic>-<partition>",
    "offset": N}``, the partition named by its key in the event's ``records`` map. Anything
    else (a bare partition number, a key not in this batch, a missing or non-integer
    offset) is malformed, and Lambda then treats the whole batch as failed."""
    failures = answer.get("batchItemFailures") if isinstance(answer, Mapping) else None
    if not failures:
        return []
    groups = {f"{r['topic']}-{r['partition']}" for r in records}
    lowest: dict[str, int] = {}
    for failure in failures:
        ident = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not isinstance(ident, Mapping):
            return list(records)
        group, offset = ident.get("partition"), ident.get("offset")
        if (not isinstance(group, str) or group not in groups
                or isinstance(offset, bool) or not isinstance(offset, int)):
            return list(records)
        lowest[group] = min(offset, lowest.get(group, offset))
    return [r for r in records
            if (group := f"{r['topic']}-{r['partition']}") in lowest
            and r["offset"] >= lowest[group]]


@dataclass
class PollerStats:
    records: int = 0
    batches: int = 0
    invocations: int = 0
    retries: int = 0
    to_destination: int = 0
    largest_batch: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


@dataclass
class EsmPoller:
    bootstrap: str
    topics: tuple[str, ...]
    invoke: Invoke
    batch_size: int = 100
    window_s: float = 0.5
    source: str = SELF_MANAGED
    max_retries: int = 2
    on_failure: OnFailure | None = None
    stats: PollerStats = field(default_factory=PollerStats)

    def deliver(self, records: list[dict[str, Any]]) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(records))
        pending, attempt = records, 0
        while pending:
            event = mapping_event(pending, source=self.source, bootstrap=self.bootstrap)
            self.stats.invocations += 1
            ok, payload = self.invoke(event)
            failed = pending if not ok else still_failing(pending, payload)
            if not failed:
                return
            if attempt >= self.max_retries:
                self.stats.to_destination += len(failed)
                if self.on_failure is not None:
                    reason = "function error" if not ok else "batchItemFailures"
                    self.on_failure(mapping_event(failed, source=self.source,
                                                  bootstrap=self.bootstrap), reason)
                return
            attempt += 1
            self.stats.retries += 1
            pending = failed

    def run_until_idle(self, *, idle_s: float = 1.0, timeout_s: float = 60.0) -> PollerStats:
        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"esm-poller-{time.monotonic_ns()}",
                             "enable.auto.commit": False, "enable.partition.eof": True})
        try:
            assignment = []
            for topic in self.topics:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                for partition in sorted(meta.partitions if meta else []):
                    assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
            if not assignment:
                return self.stats
            consumer.assign(assignment)
            self._poll(consumer, len(assignment), idle_s=idle_s, timeout_s=timeout_s)
        finally:
            consumer.close()
        return self.stats

    def _poll(self, consumer: Consumer, partitions: int, *, idle_s: float,
              timeout_s: float) -> None:
        batches: dict[str, list[dict[str, Any]]] = {}  # per topic: a mapping per topic
        opened: dict[str, float] = {}
        at_eof: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout_s
        last_news = time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            for topic in [t for t, since in opened.items()
                          if len(batches[t]) >= self.batch_size or now - since >= self.window_s]:
                self.deliver(batches.pop(topic))
                opened.pop(topic)
            if not batches and len(at_eof) == partitions and now - last_news > idle_s:
                return
            msg = consumer.poll(0.05)
            if msg is None:
                continue
            err = msg.error()
            where = (str(msg.topic()), int(msg.partition() or 0))
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(where)
                    continue
                raise RuntimeError(f"polling {where[0]} failed: {err}")
            at_eof.discard(where)
            last_news = time.monotonic()
            self.stats.records += 1
            self.stats.by_topic[where[0]] = self.stats.by_topic.get(where[0], 0) + 1
            batches.setdefault(where[0], []).append(event_record(msg))
            opened.setdefault(where[0], last_news)
        for topic in list(batches):  # the deadline: deliver what was read
            self.deliver(batches.pop(topic))
