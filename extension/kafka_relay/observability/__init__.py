"""JSON log lines and CloudWatch Embedded Metric Format metrics."""

from kafka_relay.observability.log import JsonLogger
from kafka_relay.observability.metrics import carrying, emf_line

__all__ = ["JsonLogger", "carrying", "emf_line"]
