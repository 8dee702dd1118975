"""The local event source poller honours the function's answer as the mapping does."""

from __future__ import annotations

from typing import Any

import pytest

from views_event import parse_event

from devtools.esm_poller import MSK, EsmPoller, mapping_event, still_failing


def _records(partition: int, offsets: range) -> list[dict[str, Any]]:
    return [{"topic": "t", "partition": partition, "offset": o, "timestamp": 1,
             "timestampType": "CREATE_TIME", "key": None, "value": "e30=",
             "headers": [{"x-relay-id": list(b"r")}]} for o in offsets]


def test_partial_batch_response_retries_each_partition_from_its_lowest_failed_offset() -> None:
    records = _records(0, range(5)) + _records(1, range(3))
    answer = {"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 3}},
                                    {"itemIdentifier": {"partition": "t-0", "offset": 2}}]}
    assert [(r["partition"], r["offset"]) for r in still_failing(records, answer)] == [
        (0, 2), (0, 3), (0, 4)]
    assert still_failing(records, {"batchItemFailures": []}) == []
    assert still_failing(records, None) == []


@pytest.mark.parametrize("identifier", [
    "3", {"partition": 0, "offset": 3}, {"partition": "0", "offset": 3},
    {"partition": "other-0", "offset": 3}, {"partition": "t-0", "offset": "3"},
    {"partition": "t-0", "offset": True}, {"partition": "t-0"}, None,
])
def test_an_identifier_not_in_the_kafka_shape_fails_the_whole_batch(identifier: Any) -> None:
    records = _records(0, range(5)) + _records(1, range(3))
    answer = {"batchItemFailures": [{"itemIdentifier": identifier}]}
    assert still_failing(records, answer) == records


def test_the_events_it_builds_parse_in_both_shapes() -> None:
    for source in ("SelfManagedKafka", MSK):
        batch = parse_event(mapping_event(_records(2, range(2)), source=source, bootstrap="b"))
        assert [r.position for r in batch.records] == ["t-2-0", "t-2-1"]
        assert batch.records[0].identity == "r"


def test_retries_are_bounded_then_the_failure_destination_gets_the_rest() -> None:
    calls: list[int] = []
    failed: list[tuple[int, str]] = []

    def invoke(event: dict[str, Any]) -> tuple[bool, Any]:
        calls.append(sum(len(v) for v in event["records"].values()))
        return True, {"batchItemFailures": [{"itemIdentifier": {"partition": "t-0",
                                                                 "offset": 1}}]}

    poller = EsmPoller("unused:9092", ("t",), invoke=invoke, max_retries=2,
                       on_failure=lambda event, why: failed.append(
                           (sum(len(v) for v in event["records"].values()), why)))
    poller.deliver(_records(0, range(4)))
    assert calls == [4, 3, 3]
    assert failed == [(3, "batchItemFailures")]
    assert (poller.stats.retries, poller.stats.to_destination) == (2, 3)


def test_a_function_error_retries_the_whole_batch() -> None:
    answers = iter([(False, {"errorType": "Boom"}), (True, {"batchItemFailures": []})])
    sizes: list[int] = []

    def invoke(event: dict[str, Any]) -> tuple[bool, Any]:
        sizes.append(sum(len(v) for v in event["records"].values()))
        return next(answers)

    poller = EsmPoller("unused:9092", ("t",), invoke=invoke)
    poller.deliver(_records(0, range(3)))
    assert sizes == [3, 3]
    assert poller.stats.to_destination == 0
