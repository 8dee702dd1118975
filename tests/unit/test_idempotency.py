"""Idempotency keys: a repeat gets the first answer; only answers that accepted something are
remembered; the memory is bounded in keys and time; a concurrent repeat waits for the first."""

from __future__ import annotations

import threading
import zlib

import pytest

from kafka_relay.handoff.idempotency import Answer, IdempotencyCache, KeyMismatch, fingerprint

FP = fingerprint(b"body", "application/json", "")


class Counter:
    def __init__(self, status: int = 202) -> None:
        self.calls = 0
        self.status = status

    def __call__(self) -> Answer:
        self.calls += 1
        return Answer(self.status, f"answer {self.calls}".encode())


def test_a_repeat_gets_the_first_answer_without_processing_again() -> None:
    cache, process = IdempotencyCache(), Counter()
    first, replayed_first = cache.run("k", FP, process, wait_s=1)
    again, replayed_again = cache.run("k", FP, process, wait_s=1)
    assert (first, again) == (Answer(202, b"answer 1"), Answer(202, b"answer 1"))
    assert (replayed_first, replayed_again, process.calls) == (False, True, 1)


def test_an_answer_that_accepted_nothing_is_not_remembered() -> None:
    cache, busy = IdempotencyCache(), Counter(status=429)
    cache.run("k", FP, busy, wait_s=1)
    cache.run("k", FP, busy, wait_s=1)
    assert busy.calls == 2


def test_a_key_reused_for_another_body_is_refused() -> None:
    cache = IdempotencyCache()
    cache.run("k", FP, Counter(), wait_s=1)
    with pytest.raises(KeyMismatch):
        cache.run("k", fingerprint(b"other", "application/json", ""), Counter(), wait_s=1)


def test_keys_are_forgotten_after_the_ttl_and_beyond_the_bound() -> None:
    now = [0.0]
    cache, process = IdempotencyCache(max_keys=2, ttl_s=60, monotonic=lambda: now[0]), Counter()
    cache.run("a", FP, process, wait_s=1)
    now[0] = 61
    cache.run("a", FP, process, wait_s=1)  # expired: processed again
    cache.run("b", FP, process, wait_s=1)
    cache.run("c", FP, process, wait_s=1)  # over the bound: "a" (oldest) dropped
    cache.run("a", FP, process, wait_s=1)
    assert process.calls == 5


def test_a_concurrent_repeat_waits_for_the_first_answer() -> None:
    cache = IdempotencyCache()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> Answer:
        calls.append(1)
        started.set()
        release.wait(10)
        return Answer(202, b"first")

    results: list[Answer] = []
    first = threading.Thread(target=lambda: results.append(cache.run("k", FP, slow,
                                                                     wait_s=10)[0]))
    first.start()
    assert started.wait(10)
    repeat = threading.Thread(target=lambda: results.append(cache.run("k", FP, slow,
                                                                      wait_s=10)[0]))
    repeat.start()
    release.set()
    first.join(10)
    repeat.join(10)
    assert results == [Answer(202, b"first")] * 2
    assert calls == [1]


def test_a_repeat_of_a_first_that_raised_is_processed_itself() -> None:
    cache = IdempotencyCache()

    def broken() -> Answer:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        cache.run("k", FP, broken, wait_s=1)
    assert cache.run("k", FP, Counter(), wait_s=1) == (Answer(202, b"answer 1"), False)


def _crc32_suffix(prefix: bytes, target: int) -> bytes:
    """Four bytes that make ``crc32(prefix + them) == target``: CRC-32 is affine in the
    suffix's 32 bits, so Gaussian elimination over GF(2) finds them."""
    base = zlib.crc32(prefix + bytes(4))
    rows = []  # (crc change, suffix bit) per suffix bit
    for bit in range(32):
        suffix = (1 << bit).to_bytes(4, "little")
        rows.append((zlib.crc32(prefix + suffix) ^ base, 1 << bit))
    want, solution = target ^ base, 0
    for pivot in range(32):
        found = next(i for i in range(pivot, 32) if rows[i][0] >> pivot & 1)
        rows[pivot], rows[found] = rows[found], rows[pivot]
        for i in range(32):
            if i != pivot and rows[i][0] >> pivot & 1:
                rows[i] = (rows[i][0] ^ rows[pivot][0], rows[i][1] ^ rows[pivot][1])
    for pivot in range(32):
        if want >> pivot & 1:
            solution ^= rows[pivot][1]
    return solution.to_bytes(4, "little")


def test_a_body_forged_to_the_same_crc32_and_length_is_not_the_same_request() -> None:
    first = b'{"records":[{"key":"a","value":1}]}'
    forged = b'{"records":[{"key":"b","value":'
    forged = forged.ljust(len(first) - 4, b" ")
    forged += _crc32_suffix(forged, zlib.crc32(first))
    assert (zlib.crc32(forged), len(forged)) == (zlib.crc32(first), len(first))
    cache = IdempotencyCache()
    cache.run("k", fingerprint(first, "application/json", ""), Counter(), wait_s=1)
    with pytest.raises(KeyMismatch):
        cache.run("k", fingerprint(forged, "application/json", ""), Counter(), wait_s=1)


@pytest.mark.parametrize(("content_type", "query"), [("application/x-ndjson", ""),
                                                      ("application/json", "wait=delivered")])
def test_the_same_body_with_another_media_type_or_query_is_another_request(
    content_type: str, query: str
) -> None:
    body = b'{"key":"a","value":1}'
    assert fingerprint(body, content_type, query) != fingerprint(body, "application/json", "")
