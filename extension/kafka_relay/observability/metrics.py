"""CloudWatch Embedded Metric Format: metrics ride on a log line, no API calls."""

from __future__ import annotations

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
    unknown = set(metrics) - set(_UNITS)
    if unknown:
        raise ValueError(f"unknown metric names {sorted(unknown)}")
    blob: dict[str, object] = {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["FunctionName"]],
                    "Metrics": [{"Name": name, "Unit": _UNITS[name]} for name in metrics],
                }
            ],
        },
        "FunctionName": function_name or "unknown",
    }
    blob.update(metrics)
    return json.dumps(blob, separators=(",", ":"))
