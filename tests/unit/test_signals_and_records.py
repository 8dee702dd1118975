"""Handler-done signals survive races; spilled records round-trip byte for byte."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.record import IdSource, Record
from kafka_relay.spill.codec import parse_spill_lines, spill_lines


def test_an_end_that_arrives_before_the_invoke_event_is_remembered() -> None:
    signals = HandlerSignals()
    signals.mark_done("req-2")
    assert signals.wait("req-2", 0)
    assert not signals.wait("req-3", 0.01)


def test_an_anonymous_end_releases_one_waiter() -> None:
    signals = HandlerSignals()
    threading.Timer(0.05, signals.mark_done, args=(None,)).start()
    assert signals.wait("req-1", 2)
    assert not signals.wait("req-1b", 0.01)


def test_a_batch_to_read_later_is_read_only_by_a_waiter_that_needs_an_end() -> None:
    """With the client's end call, Telemetry's batches are never parsed; a waiter whose end
    has not come reads them, including one that arrives while it waits."""
    signals = HandlerSignals()
    reads: list[str] = []

    def batch(*ends: str) -> Callable[[], None]:
        def read() -> None:
            reads.append(",".join(ends))
            for end in ends:
                signals.mark_done(end)
        return read

    signals.mark_done("req-1")  # the end call
    signals.mark_later(batch("req-0", "req-1"))  # Telemetry, later
    assert signals.wait("req-1", 2)
    assert reads == []
    # An end call within READ_AFTER_S of the wait (a clock that stands still: always
    # within): nothing is read either.
    still = HandlerSignals(monotonic=lambda: 0.0)
    still.mark_later(lambda: reads.append("too early"))
    threading.Timer(0.05, still.mark_done, args=("req-2",)).start()
    assert still.wait("req-2", 2)
    assert reads == []
    started = time.monotonic()
    threading.Timer(0.05, signals.mark_later, args=(batch("req-3"),)).start()
    assert signals.wait("req-3", 2)  # no end call: the batches are read, oldest first
    assert time.monotonic() - started >= 0.05
    assert reads == ["req-0,req-1", "req-3"]
    assert signals.wait("req-0", 0)
    signals.mark_later(batch("req-4"))
    assert signals.wait("req-4", 0), "a waiter that gives up reads what is left first"
    assert not signals.wait("req-5", 0.01)


class _CountingCondition(threading.Condition):
    """Counts the wakes of its waiters: True notified, False timed out."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes: list[bool] = []

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.wakes.append(woken)
        return woken


def test_a_batch_kept_unread_does_not_wake_a_waiter_the_end_call_wakes() -> None:
    """Telemetry's batch comes at about every thaw, while the loop waits for the client's end
    call: within READ_AFTER_S (a clock that stands still: always within) it is kept without
    waking the waiter, which the end call then wakes once."""
    signals = HandlerSignals(monotonic=lambda: 0.0)
    cond = signals._cond = _CountingCondition()
    reads: list[str] = []
    threading.Timer(0.005, signals.mark_later, args=(lambda: reads.append("batch"),)).start()
    threading.Timer(0.015, signals.mark_done, args=("req-1",)).start()
    assert signals.wait("req-1", 2)
    assert cond.wakes.count(True) == 1  # notified once (other wakes: READ_AFTER_S timers)
    assert reads == []


def test_a_waiter_past_read_after_is_woken_by_a_batch_and_reads_it() -> None:
    """Without the end call (an undecorated handler), a waiter that has waited READ_AFTER_S
    reads a batch as it comes: woken by it once, after its timed wakes up to READ_AFTER_S."""
    signals = HandlerSignals()
    cond = signals._cond = _CountingCondition()
    started = time.monotonic()  # before the timer: it fires 0.1 s or more after this
    threading.Timer(0.1, signals.mark_later,
                    args=(lambda: signals.mark_done("req-1"),)).start()
    assert signals.wait("req-1", 2)
    assert 0.1 <= time.monotonic() - started < 1.0
    assert cond.wakes[-1]
    assert cond.wakes.count(True) == 1


def test_batches_kept_unread_are_bounded_oldest_dropped() -> None:
    signals = HandlerSignals()
    for n in range(200):
        signals.mark_later(lambda n=n: signals.mark_done(f"req-{n}"))  # type: ignore[misc]
    assert signals.wait("req-199", 0)
    assert signals.wait("req-136", 0)  # the newest 64 were kept
    assert not signals.wait("req-135", 0)


def test_ids_are_unique_per_environment() -> None:
    a, b = IdSource(), IdSource()
    ids = [*a.take(1), *a.take(999), *b.take(1000)]
    assert len(set(ids)) == 2000


def test_blocks_drawn_by_threads_at_once_never_share_an_id() -> None:
    source = IdSource("p")
    blocks: list[list[str]] = []
    start = threading.Barrier(8)

    def draw() -> None:
        start.wait()
        for _ in range(50):
            blocks.append(source.take(100))  # list.append is atomic

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for block in blocks for i in block]
    assert len(ids) == len(set(ids)) == 8 * 50 * 100
    assert all(i.startswith("p-") for i in ids)


def test_a_reseeded_source_draws_under_its_new_prefix_only() -> None:
    source = IdSource("old")
    before = source.take(3)
    prefix = source.reseed()
    after = source.take(3)
    assert prefix != "old"
    assert source.prefix == prefix
    assert before == ["old-00000001", "old-00000002", "old-00000003"]
    assert after == [f"{prefix}-0000000{n}" for n in (1, 2, 3)]


def _record(size: int) -> Record:
    record = Record(id="abc-1", topic="rss.events", key=b"k", value=bytes(range(256)) * size,
                    headers=(("h", b"\x00v"),), timestamp_ms=42, request_id="req-1")
    record.attempts, record.dlq_error = 2, "TOPIC_EXCEPTION: bad"
    return record


def test_spill_form_round_trips_every_field() -> None:
    original = _record(3)
    again = Record.from_spill(json.loads(original.spill_json()))
    assert (again.id, again.topic, again.key, again.value, again.headers, again.timestamp_ms,
            again.request_id, again.attempts, again.dlq_error) == (
        original.id, original.topic, original.key, original.value, original.headers,
        original.timestamp_ms, original.request_id, original.attempts, original.dlq_error)


def test_large_records_spill_as_chunked_log_lines_and_reassemble() -> None:
    original = _record(2_000)  # 512 KB: over CloudWatch's 256 KB event limit
    lines = list(spill_lines([original], reason="shutdown"))
    assert len(lines) > 1
    assert all(len(line) < 200_000 for line in lines)
    noise = ["START RequestId: x", '{"event":"other"}']
    (again,) = parse_spill_lines(["2026-01-01T00:00:00Z " + lines[-1], *noise, *lines[:-1]]).records
    assert again.value == original.value
    assert again.id == original.id


@pytest.mark.parametrize("prefix", ["", 'a"b', "a\\b", "a b", "é"])
def test_an_id_prefix_holds_only_what_json_and_headers_carry_as_is(prefix: str) -> None:
    with pytest.raises(ValueError, match="an id prefix is letters, digits"):
        IdSource(prefix)
