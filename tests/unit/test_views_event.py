"""The Kafka event source mapping's event: both shapes parse to the same records."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from views_event import (
    MSK,
    SELF_MANAGED,
    EventFormatError,
    KafkaRecord,
    Malformed,
    build_event,
    by_partition,
    parse_event,
)

topics = st.sampled_from(["polymarket.price_hourly", "rss.events", "a-b-c"])
records = st.builds(
    KafkaRecord,
    topic=topics,
    partition=st.integers(0, 5),
    offset=st.integers(0, 2**40),
    timestamp_ms=st.integers(0, 2**42),
    timestamp_type=st.sampled_from(["CREATE_TIME", "LOG_APPEND_TIME"]),
    key=st.none() | st.binary(max_size=40),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(st.tuples(st.text(min_size=1, max_size=12), st.binary(max_size=30)),
                     max_size=4).map(tuple),
)


@given(st.lists(records, max_size=20), st.sampled_from([MSK, SELF_MANAGED]))
def test_both_event_shapes_round_trip_every_record(batch: list[KafkaRecord], source: str) -> None:
    event = build_event(batch, source=source, bootstrap="b1:9092,b2:9092")
    parsed = parse_event(event)
    assert parsed.source == source
    assert parsed.malformed == ()
    assert sorted(parsed.records, key=repr) == sorted(batch, key=repr)
    assert (parsed.event_source_arn is not None) == (source == MSK)


def test_msk_event_as_aws_documents_it() -> None:
    event = {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/vpc-2priv-2pub/x",
        "bootstrapServers": "b-2.demo:9092,b-1.demo:9092",
        "records": {"mytopic-0": [{
            "topic": "mytopic", "partition": 0, "offset": 15, "timestamp": 1545084650987,
            "timestampType": "CREATE_TIME", "key": "abcDEFghiJKLmnoPQRstuVWXyz1234==",
            "value": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
            "headers": [{"headerKey": [104, 101, 97, 100, 101, 114, 86, 97, 108, 117, 101]}],
        }]},
    }
    (record,) = parse_event(event).records
    assert record.value == b"Hello, this is a test."
    assert record.header("headerKey") == "headerValue"
    assert record.position == "mytopic-0-15"
    assert record.identity == "mytopic-0-15"  # no x-relay-id: the position


def test_relay_id_header_is_the_identity() -> None:
    record = KafkaRecord("t", 0, 1, 0, "CREATE_TIME", None, b"{}",
                         (("x-relay-id", b"r-1"),))
    (parsed,) = parse_event(build_event([record])).records
    assert parsed.identity == "r-1"


@pytest.mark.parametrize(("entry", "reason"), [
    ({"topic": "t", "partition": 0, "offset": 3, "timestamp": 1, "value": "%%%"}, "base64"),
    ({"topic": "t", "partition": 0, "offset": 3, "timestamp": 1,
      "headers": [{"h": [256]}]}, "byte values"),
    ({"topic": "t", "partition": 0, "timestamp": 1}, "offset"),
])
def test_an_undecodable_record_is_malformed_not_a_failed_batch(
    entry: dict[str, object], reason: str
) -> None:
    good = {"topic": "t", "partition": 0, "offset": 4, "timestamp": 1,
            "value": base64.b64encode(b"ok").decode()}
    parsed = parse_event({"eventSource": SELF_MANAGED, "records": {"t-0": [entry, good]}})
    assert [r.offset for r in parsed.records] == [4]
    (bad,) = parsed.malformed
    assert isinstance(bad, Malformed)
    assert reason in bad.reason
    assert (bad.topic, bad.partition) == ("t", 0)


@pytest.mark.parametrize("event", [None, [], {"eventSource": "aws:sqs", "Records": []},
                                   {"eventSource": MSK}])
def test_other_events_are_refused_with_a_reason(event: object) -> None:
    with pytest.raises(EventFormatError):
        parse_event(event)


def test_by_partition_orders_offsets_within_each_partition() -> None:
    rec = [KafkaRecord("t", p, o, 0, "CREATE_TIME", None, None) for p, o in
           [(1, 5), (0, 9), (1, 2), (0, 1)]]
    groups = [[(r.partition, r.offset) for r in g] for g in by_partition(tuple(rec))]
    assert groups == [[(0, 1), (0, 9)], [(1, 2), (1, 5)]]
