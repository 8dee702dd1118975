"""A large body is read into a mapping of its own: it must read exactly as the same bytes do."""

from __future__ import annotations

import json
import mmap
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.handoff.body import trim_heap
from kafka_relay.handoff.schema import InvalidRequest, records_from_body
from kafka_relay.protocol import FRAMES_TYPE, encode_frames
from kafka_relay.record import IdSource, Record
from tests.unit.test_frames import framable


def _mapped(body: bytes) -> mmap.mmap:
    """As read_body returns a large body (never an empty one)."""
    mapped = mmap.mmap(-1, len(body))
    mapped.write(body)
    return mapped


def _fields(records: list[Record]) -> list[tuple[Any, ...]]:
    return [(r.id, r.topic, r.key, r.value, r.headers, r.timestamp_ms) for r in records]


def _read(body: bytes | mmap.mmap, content_type: str) -> list[tuple[Any, ...]] | str:
    try:
        return _fields(records_from_body(body, content_type, default_topic="t",
                                         new_ids=IdSource("p").take, request_id="r", now_ms=1))
    except InvalidRequest as exc:
        return str(exc)


@settings(max_examples=150, deadline=None)
@given(st.lists(framable, min_size=1, max_size=5), st.binary(max_size=8))
def test_a_mapped_framed_body_reads_as_its_bytes_do(records: list[dict[str, Any]],
                                                     tail: bytes) -> None:
    for body in (encode_frames(records), encode_frames(records) + tail):
        assert _read(_mapped(body), FRAMES_TYPE) == _read(body, FRAMES_TYPE)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({"key": st.text(max_size=8),
                                       "value": st.text(max_size=20)}), max_size=4),
       st.binary(min_size=1, max_size=6))
def test_a_mapped_json_body_reads_as_its_bytes_do(records: list[dict[str, Any]],
                                                   noise: bytes) -> None:
    for body in (json.dumps({"records": records}).encode(), noise):
        assert _read(_mapped(body), "application/json") == _read(body, "application/json")


def test_the_heap_is_trimmed_where_glibc_runs() -> None:
    assert trim_heap() is True  # this machine, like Lambda, runs glibc
