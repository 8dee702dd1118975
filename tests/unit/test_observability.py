"""Log lines are single JSON objects; metrics are valid CloudWatch EMF."""

from __future__ import annotations

import io
import json

import pytest

from kafka_relay.observability import JsonLogger, emf_line
from kafka_relay.observability.log import librdkafka_logger


def test_log_lines_carry_level_event_request_id_and_fields() -> None:
    stream = io.StringIO()
    logger = JsonLogger(stream=stream, level="INFO", clock=lambda: 1700000000.5)
    logger.request_id = "req-9"
    logger.debug("hidden")
    logger.info("flush", delivered=3)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line) == {"ts": 1700000000.5, "level": "INFO", "logger": "kafka-relay",
                                "event": "flush", "request_id": "req-9", "delivered": 3}


def test_emf_lines_declare_every_metric_with_its_unit() -> None:
    blob = json.loads(emf_line({"RecordsDelivered": 5, "FlushMs": 12.5},
                               function_name="rss", timestamp_ms=42))
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    assert blob["_aws"]["Timestamp"] == 42
    assert directive["Namespace"] == "KafkaRelay"
    assert directive["Dimensions"] == [["FunctionName"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "RecordsDelivered": "Count", "FlushMs": "Milliseconds"}
    assert (blob["FunctionName"], blob["RecordsDelivered"], blob["FlushMs"]) == ("rss", 5, 12.5)


def test_unknown_metric_names_are_refused() -> None:
    with pytest.raises(ValueError, match="Typo"):
        emf_line({"Typo": 1}, function_name="f", timestamp_ms=0)


def test_librdkafka_lines_become_json_lines_at_their_level() -> None:
    stream = io.StringIO()
    logger = librdkafka_logger(JsonLogger(stream=stream, level="INFO"))
    logger.debug("too chatty")
    logger.error("FAIL|rdkafka#producer-1| Connect to 127.0.0.1:9 failed")
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["level"], event["event"]) == ("ERROR", "librdkafka")
    assert "Connect to 127.0.0.1:9 failed" in event["message"]
