"""The local event source poller honours the function's answer as the mapping does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=9), inner,
                                                                 max_size=3),
    max_leaves=8)


@given(st.lists(st.one_of(
    json_values,
    st.fixed_dictionaries({"itemIdentifier": st.fixed_dictionaries({
        "partition": st.sampled_from(["t-0", "t-1", "t-2", 0, "0"]),
        "offset": st.integers(-1, 6) | json_values})}),
), min_size=1, max_size=4))
def test_any_answer_retries_a_suffix_per_partition_or_the_whole_batch(
    failures: list[Any],
) -> None:
    records = _records(0, range(5)) + _records(1, range(3))
    retried = still_failing(records, {"batchItemFailures": failures})
    idents = [f.get("itemIdentifier") if isinstance(f, dict) else None for f in failures]
    well_formed = all(
        isinstance(i, dict) and i.get("partition") in ("t-0", "t-1")
        and type(i.get("offset")) is int for i in idents)
    if not well_formed:
        assert retried == records
        return
    lowest: dict[int, int] = {}
    for ident in idents:
        assert isinstance(ident, dict)
        partition = int(ident["partition"][2:])
        lowest[partition] = min(ident["offset"], lowest.get(partition, ident["offset"]))
    assert retried == [r for r in records
                       if r["partition"] in lowest and r["offset"] >= lowest[r["partition"]]]


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
