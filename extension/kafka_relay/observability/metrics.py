"""CloudWatch Embedded Metric Format: metrics ride on a log line, no API calls."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

NAMESPACE = "KafkaRelay"

_UNITS = {
    "RecordsAccepted": "Count",
    "RecordsDelivered": "Count",
    "RecordsDeadLettered": "Count",
    "RecordsSpilled": "Count",
    "RecordsRejected": "Count",
    "FlushMs": "Milliseconds",
    "BufferDepth": "Count",
}


def emf_line(
    metrics: Mapping[str, float], *, function_name: str, timestamp_ms: int
) -> str:
    """One EMF JSON line; ``metrics`` keys must be among the known metric names."""
    names = tuple(metrics)
    values = json.dumps(dict(metrics), separators=(",", ":"))[1:]  # '"Name":1,...}'
    return (f'{{"_aws":{{"Timestamp":{int(timestamp_ms)},"CloudWatchMetrics":'
            f'{_directive(names)}}},"FunctionName":{_json_string(function_name or "unknown")}'
            + ("," + values if names else "}"))


@functools.lru_cache(maxsize=16)
def _directive(names: tuple[str, ...]) -> str:
    """The metric declarations for these names: the same every invocation, encoded once."""
    unknown = set(names) - set(_UNITS)
    if unknown:
        raise ValueError(f"unknown metric names {sorted(unknown)}")
    return json.dumps([{"Namespace": NAMESPACE, "Dimensions": [["FunctionName"]],
                        "Metrics": [{"Name": name, "Unit": _UNITS[name]} for name in names]}],
                      separators=(",", ":"))


@functools.lru_cache(maxsize=16)
def _json_string(text: str) -> str:
    return json.dumps(text)
