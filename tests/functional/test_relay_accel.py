"""The alternatives bench's C accelerator against the Python it replaces: it frames records
byte for byte as ``protocol.encode_frames`` (or leaves them to it), accepts exactly the
bodies the handoff accepts, and produces the same fields the handoff's Records carry."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from bench import accel
from kafka_relay.handoff.schema import InvalidRequest, records_from_body
from kafka_relay.protocol import FRAMES_MAGIC, FRAMES_TYPE, FrameError, _chunks, encode_frames
from kafka_relay.record import IdSource
from tests.record_strategies import hostile_text, json_values

_RECORD = struct.Struct("<BHIIHQ")
_HEADER = struct.Struct("<HI")


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> accel.Accel:
    return accel.load(accel.build(tmp_path_factory.mktemp("accel")))


_RECORDS = st.lists(st.fixed_dictionaries(
    {"value": json_values | st.binary(max_size=40)},
    optional={"key": st.none() | hostile_text | st.binary(max_size=8),
              "topic": st.sampled_from(["t", "bad topic"]), "colour": st.just("red")}),
    max_size=6)


@settings(max_examples=300, deadline=None)
@given(records=_RECORDS)
def test_encode_frames_as_the_client_does_or_leaves_the_batch_to_it(
        module: accel.Accel, records: list[dict[str, Any]]) -> None:
    framed = module.encode(records, _chunks)
    try:
        expected = encode_frames(records)
    except FrameError:
        assert framed is None  # the general path names the record that cannot be sent
        return
    assert framed in (None, expected)


def test_the_plain_records_of_the_bench_are_framed_in_c(module: accel.Accel) -> None:
    records = [{"key": f"k{i}", "value": {"i": i, "text": "é😀", "list": [1.5, None, True]}}
               for i in range(50)]
    assert module.encode(records, _chunks) == encode_frames(records)


# A frame as bytes: flags that mostly agree with the fields (``noise`` flips one bit), and
# fields free to be wrong (topic names, header names, timestamps, counts, a cut or a trailing
# byte): what a hostile writer could put in a ring or a request body.
_FRAMES = st.lists(st.tuples(
    st.sampled_from([0] * 12 + [1, 2, 4, 8, 16]),  # noise
    st.sampled_from([b"", b"", b"t", b"other.topic", b"a" * 249, b"..", b"bad topic", b"\xff",
                     b"a" * 250]),
    st.booleans(),  # a key (else null)
    st.binary(max_size=6),  # key
    st.binary(max_size=12),  # value; empty may be null
    st.lists(st.tuples(st.sampled_from([b"h", b"h", b"h", b"caf\xc3\xa9", b"X-Relay-Id",
                                        b"x-relay-", b"\xc3", b"a\x00"]), st.binary(max_size=4)),
             max_size=2),
    st.sampled_from([0, 0, 0, 1, 1_700_000_000_000, 2**63 - 1, 2**63, 2**64 - 1]),
), max_size=3)
_FLAG_KEY, _FLAG_VALUE_NULL, _FLAG_TIMESTAMP, _FLAG_TOPIC = 1, 2, 4, 8


def _body(frames: list[tuple[int, bytes, bool, bytes, bytes, list[tuple[bytes, bytes]], int]],
          count_delta: int, cut: int, extra: bytes) -> bytes:
    parts = [FRAMES_MAGIC, struct.pack("<I", max(0, len(frames) + count_delta))]
    for noise, topic, has_key, drawn_key, value, headers, timestamp in frames:
        key = drawn_key if has_key else b""
        flags = ((_FLAG_TOPIC if topic else 0) | (_FLAG_KEY if has_key else 0)
                 | (_FLAG_VALUE_NULL if not value and has_key else 0)
                 | (_FLAG_TIMESTAMP if timestamp else 0)) ^ noise
        parts += [_RECORD.pack(flags, len(topic), len(key), len(value), len(headers), timestamp),
                  topic, key, value]
        for name, header_value in headers:
            parts += [_HEADER.pack(len(name), len(header_value)), name, header_value]
    body = b"".join(parts) + extra
    return body[:len(body) - cut] if cut else body


def _python(body: bytes) -> list[tuple[Any, ...]] | None:
    try:
        records = records_from_body(body, FRAMES_TYPE, default_topic="default",
                                    new_ids=IdSource("x").take, request_id=None, now_ms=0)
    except InvalidRequest:
        return None
    return [(r.topic, r.key, r.value, list(r.headers), r.timestamp_ms or 0) for r in records]


class _Collect:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def __call__(self, topic: str, **fields: Any) -> None:
        headers = fields["headers"]
        assert headers[-1][0] == "x-relay-id"
        self.seen.append((topic, fields["key"], fields["value"], headers[:-1],
                          fields["timestamp"]))


@settings(max_examples=600, deadline=None)
@given(frames=_FRAMES, count_delta=st.sampled_from([0, 0, 0, 0, 0, 1, -1]),
       cut=st.sampled_from([0, 0, 0, 0, 0, 1, 5]), extra=st.sampled_from([b"", b"", b"", b"\x00"]))
def test_check_accepts_exactly_what_the_handoff_accepts_and_produces_its_fields(
        module: accel.Accel, frames: Any, count_delta: int, cut: int, extra: bytes) -> None:
    body = _body(frames, count_delta, cut, extra)
    expected = _python(body)
    try:
        count = module.check(body, True)
    except ValueError as exc:
        index, reason = exc.args
        assert expected is None, f"C refused what Python accepts: {index} {reason}"
        assert reason
        event("refused")
        return
    assert expected is not None, "C accepted what Python refuses"
    event("accepted")
    assert count == len(expected)
    produced = _Collect()
    settle = module.Settle(count)
    assert module.produce_all(body, 0, produced, "default", "x", 1, settle) == count
    assert produced.seen == expected


def test_refusals_name_the_record(module: accel.Accel) -> None:
    body = encode_frames([{"value": 1}, {"value": 2, "headers": {"x-relay-own": "v"}}])
    with pytest.raises(ValueError, match="reserved prefix") as refused:
        module.check(body, True)
    assert refused.value.args[0] == 1


def test_settle_counts_reports_down_and_keeps_the_failures(module: accel.Accel) -> None:
    settle = module.Settle(3)
    settle(None, "message-1")
    settle("an error", "message-2")
    assert (settle.outstanding, settle.failed) == (1, [("an error", "message-2")])


def test_a_compiler_error_says_what_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(accel, "SOURCE", broken)
    with pytest.raises(accel.BuildError, match="failed"):
        accel.build(tmp_path)
