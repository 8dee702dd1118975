"""Log lines are single JSON objects; metrics are valid CloudWatch EMF."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_relay.observability import JsonLogger, emf_line
from kafka_relay.observability.log import LibrdkafkaLog
from kafka_relay.observability.metrics import _UNITS


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


@given(metrics=st.dictionaries(st.sampled_from(sorted(_UNITS)),
                                st.integers(0, 10**9) | st.floats(0, 1e6), max_size=7),
       name=st.text(max_size=20), timestamp_ms=st.integers(0, 2**42))
def test_every_emf_line_is_one_json_object_declaring_exactly_its_metrics(
        metrics: dict[str, float], name: str, timestamp_ms: int) -> None:
    blob = json.loads(emf_line(metrics, function_name=name, timestamp_ms=timestamp_ms))
    (directive,) = blob.pop("_aws")["CloudWatchMetrics"]
    assert [m["Name"] for m in directive["Metrics"]] == list(metrics)
    assert blob == {"FunctionName": name or "unknown", **metrics}


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_written_together_arrive_as_separate_lines_in_one_write() -> None:
    stream = _CountingStream()
    logger = JsonLogger(stream=stream, level="INFO", clock=lambda: 1.0)
    line = logger.format("INFO", "invocation.done", accepted=1)
    assert logger.format("DEBUG", "hidden") is None
    assert line is not None
    logger.write_raw(line, '{"_aws":{}}')
    assert [json.loads(x)["event"] if "event" in x else x
            for x in stream.getvalue().splitlines()] == ["invocation.done", '{"_aws":{}}']
    assert stream.writes == 1


def test_unknown_metric_names_are_refused() -> None:
    with pytest.raises(ValueError, match="Typo"):
        emf_line({"Typo": 1}, function_name="f", timestamp_ms=0)


def test_librdkafka_lines_become_json_lines_at_their_level() -> None:
    stream = io.StringIO()
    logger = LibrdkafkaLog(JsonLogger(stream=stream, level="INFO"))
    # As confluent-kafka calls it: logging's levels, librdkafka's facility, name and text.
    logger.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#producer-1", "too chatty")
    logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
               "Connect to 127.0.0.1:9 failed")
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["level"], event["event"]) == ("ERROR", "librdkafka")
    assert "Connect to 127.0.0.1:9 failed" in event["message"]
