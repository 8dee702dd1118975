"""bench.alternatives measures only paths that deliver: run tiny against the real broker,
each path puts exactly the records it was given on its topic, byte for byte, once each."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import accel, ring
from bench.alternatives import (
    PATHS,
    RELAYED,
    Role,
    Scenario,
    measure,
    on_topics,
    role_spec,
    value_bytes,
    workload,
)
from kafka_relay.protocol import encode_frames
from kafka_relay.ring import pending
from tests.conftest import Broker

_TINY = Scenario("tiny", per_invocation=7, size=300, invocations=3, vcpus=None)
_IN_C = ("ring-c", "ring-rd")


@contextmanager
def _ring_relay(path: str, broker: Broker, tmp_path: Path,
                topic: str) -> Iterator[ring.RingWriter]:
    """A relay process of ``path`` (default topic ``topic``) and a writer connected to it."""
    spec = role_spec(path, _TINY, bootstrap=broker.bootstrap, topic=topic, workdir=tmp_path,
                     accel_path=accel.build(tmp_path) if path in _IN_C else None,
                     rdkafka_path=accel.build_rdkafka(tmp_path) if path == "ring-rd" else None)
    relay = Role("relay", spec)
    try:
        writer = ring.RingWriter(Path(spec["dir"]) / "relay.ring", relay.read()["ready"])
        try:
            yield writer
        finally:
            writer.close()
    finally:
        relay.close()


@pytest.mark.parametrize("path", PATHS)
def test_each_path_puts_exactly_its_records_on_its_topic(
        broker: Broker, tmp_path: Path, path: str) -> None:
    topic = f"alternatives.{uuid.uuid4().hex[:12]}"
    sample = measure(path, _TINY, bootstrap=broker.bootstrap, workdir=tmp_path,
                     accel_path=accel.build(tmp_path) if path in _IN_C else None,
                     rdkafka_path=accel.build_rdkafka(tmp_path) if path == "ring-rd" else None,
                     topic=topic)
    given = Counter((r["key"].encode(), value_bytes(r["value"]))
                    for n in range(_TINY.invocations + 1)  # the warm-up invocation too
                    for r in workload(n, _TINY.per_invocation, _TINY.size))
    read = broker.read(topic, expected=sample.given)
    assert Counter((r.key, r.value) for r in read) == given
    assert sample.given == sum(given.values()) == 28
    assert on_topics(broker.bootstrap, [topic]) == {topic: (sample.given, sample.given_bytes)}
    assert sample.relay.get("failed", 0) == 0
    if path in RELAYED:
        assert len({r.headers["x-relay-id"] for r in read}) == 28
    assert sample.client_cpu_s > 0
    assert sample.wall_s > 0
    assert (sample.relay_cpu_s > 0) == (path in RELAYED)


def test_the_one_vcpu_bound_is_a_quota_or_one_core(broker: Broker, tmp_path: Path) -> None:
    sample = measure("ring", _TINY._replace(vcpus=1.0), bootstrap=broker.bootstrap,
                     workdir=tmp_path, accel_path=None,
                     topic=f"alternatives.{uuid.uuid4().hex[:12]}")
    assert sample.bound.startswith("cgroup quota 100000 100000") or \
        "pinned to core" in sample.bound
    assert on_topics(broker.bootstrap, [sample.topic]) == {
        sample.topic: (sample.given, sample.given_bytes)}


@pytest.mark.parametrize("path", ["ring-engine", "ring", "ring-c", "ring-rd"])
def test_a_body_the_relay_refuses_reaches_the_writer_and_none_of_it_the_topic(
        broker: Broker, tmp_path: Path, path: str) -> None:
    topic = broker.create_topic()
    with _ring_relay(path, broker, tmp_path, topic) as writer:
        refused = encode_frames([{"key": "kept-back", "value": 1},
                                 {"key": "bad", "value": 2, "headers": {"x-relay-own": "v"}}])
        with pytest.raises(ring.RingError, match=r"record 1: .*reserved prefix"):
            writer.send(refused)
        writer.send(encode_frames([{"key": "good", "value": 3}]))
        assert writer.flush() == 0
        assert list(pending(writer.ring)) == []  # settled, and the refused body never counts
    assert [(r.key, r.value) for r in broker.read(topic, expected=1)] == [(b"good", b"3")]


@pytest.mark.parametrize("path", ["ring-engine", "ring", "ring-c", "ring-rd"])
def test_ring_relays_produce_topics_headers_timestamps_and_null_values_as_given(
        broker: Broker, tmp_path: Path, path: str) -> None:
    default, other = broker.create_topic(), broker.create_topic()
    with _ring_relay(path, broker, tmp_path, default) as writer:
        writer.send(encode_frames([
            {"key": "a", "value": {"n": 1}, "headers": {"h": "v", "é": b"\x00\xff"},
             "timestamp_ms": 1_700_000_000_000},
            {"key": "b", "value": None},
            {"value": b"raw", "topic": other},
        ]))
        assert writer.flush() == 0
    on_default = {r.key: r for r in broker.read(default, expected=2)}
    [elsewhere] = broker.read(other, expected=1)
    first, tombstone = on_default[b"a"], on_default[b"b"]
    assert (first.value, first.timestamp_ms) == (b'{"n":1}', 1_700_000_000_000)
    assert {k: v for k, v in first.headers.items() if k != "x-relay-id"} == {
        "h": b"v", "é": b"\x00\xff"}
    assert tombstone.value is None
    assert (elsewhere.key, elsewhere.value) == (None, b"raw")
    assert len({first.headers["x-relay-id"], tombstone.headers["x-relay-id"],
                elsewhere.headers["x-relay-id"]}) == 3
