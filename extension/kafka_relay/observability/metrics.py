"""CloudWatch Embedded Metric Format: metrics ride on a log line, no API calls.

``METRICS`` is the one definition of every metric the extension writes: the EMF
line is checked against it and the operator docs' metric table is generated from
it (``kafka_relay.tools.metrics_doc``), so the two cannot drift apart.
"""

import functools
import json
from collections.abc import Mapping
from typing import NamedTuple

NAMESPACE = "KafkaRelay"
DIMENSIONS = ("FunctionName",)


class Metric(NamedTuple):
    name: str
    unit: str
    statistic: str  # the statistic that answers the question in ``meaning``
    meaning: str


METRICS = (
    Metric("RecordsAccepted", "Count", "Sum", "records handed over and answered 2xx"),
    Metric("RecordsDelivered", "Count", "Sum", "records acknowledged by their topic"),
    Metric("RecordsDeadLettered", "Count", "Sum",
           "records acknowledged by the dead-letter topic (not merely routed to it)"),
    Metric("DeadLetterFailures", "Count", "Sum",
           "dead letters the DLQ did not take either (each time one was spilled or "
           "spooled instead)"),
    Metric("RecordsSpilled", "Count", "Sum",
           "records written to S3 or KAFKA_RELAY_SPILL log lines: replay them"),
    Metric("RecordsSpooled", "Count", "Sum",
           "records parked in the /tmp spool for a later invocation of this environment"),
    Metric("RecordsRestored", "Count", "Sum",
           "records taken back from the spool (or a crashed predecessor's journal)"),
    Metric("RecordsRejected", "Count", "Sum", "records refused with 4xx/429/503 (never owned)"),
    Metric("BufferDepth", "Count", "Maximum", "records owned and not yet settled"),
    Metric("OldestPendingMs", "Milliseconds", "Maximum",
           "age of the oldest record owned and not yet settled"),
    Metric("BreakerOpen", "Count", "Maximum",
           "1 while the broker circuit breaker is open (invocations do not wait for Kafka)"),
    Metric("FlushMs", "Milliseconds", "Average", "time an invocation spent flushing"),
)
_UNITS = {metric.name: metric.unit for metric in METRICS}
# One encoder for every line: json.dumps with arguments builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def emf_line(
    metrics: Mapping[str, float], *, function_name: str, timestamp_ms: int
) -> str:
    """One EMF JSON line; ``metrics`` keys must be among the known metric names."""
    names = tuple(metrics)
    values = _encode(dict(metrics))[1:]  # '"Name":1,...}'
    return (f'{{"_aws":{{"Timestamp":{int(timestamp_ms)},"CloudWatchMetrics":'
            f'{_directive(names)}}},"FunctionName":{_json_string(function_name or "unknown")}'
            + ("," + values if names else "}"))


def carrying(line: str, metrics_line: str) -> str:
    """One JSON object with the members of a log line and of an EMF line (EMF allows any
    members beside its own, and their names do not meet): the log line carries its metrics,
    one line instead of two."""
    return f"{line[:-1]},{metrics_line[1:]}"


@functools.lru_cache(maxsize=16)
def _directive(names: tuple[str, ...]) -> str:
    """The metric declarations for these names: the same every invocation, encoded once."""
    unknown = set(names) - set(_UNITS)
    if unknown:
        raise ValueError(f"unknown metric names {sorted(unknown)}")
    return json.dumps([{"Namespace": NAMESPACE, "Dimensions": [list(DIMENSIONS)],
                        "Metrics": [{"Name": name, "Unit": _UNITS[name]} for name in names]}],
                      separators=(",", ":"))


@functools.lru_cache(maxsize=16)
def _json_string(text: str) -> str:
    return json.dumps(text)
