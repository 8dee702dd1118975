"""Answer a repeated request (same idempotency key) with the first answer, accepting nothing.

The client sends one key per logical request and re-sends it on a retry (a read
timeout does not tell it whether the first POST was accepted). Only answers that
accepted records are remembered: a 400/429/503 accepted nothing, so a retry of it
is processed afresh. A repeat that arrives while the first is still being
processed waits for that first answer.

A key is bound to a ``fingerprint`` of what it was first sent with (``fingerprint``
says how strong and why that is enough), so a different request under the same key is
refused (422) and never gets another request's ids, even when crafted to collide with
a checksum such as CRC-32.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from kafka_relay.handoff.body import Body

DEFAULT_KEYS = 1_024
DEFAULT_TTL_S = 300.0


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class _Entry:
    __slots__ = ("_running", "answer", "born", "fingerprint")

    def __init__(self, fingerprint: "Fingerprint", born: float) -> None:
        self.fingerprint = fingerprint
        self.born = born
        # Held until the first request is answered: one per request, and a lock costs a
        # tenth of a threading.Event (a condition and its lock).
        self._running = threading.Lock()
        self._running.acquire()
        self.answer: Answer | None = None

    def done(self) -> bool:
        return not self._running.locked()

    def wait(self, timeout_s: float) -> bool:
        """Whether the first request was answered within ``timeout_s``."""
        if not self._running.acquire(timeout=timeout_s):
            return False
        self._running.release()
        return True

    def finish(self) -> None:
        self._running.release()


# What a key is bound to: content type, query, body length, keyed hash of each chunk.
Fingerprint = tuple[str, str, int, tuple[int, ...]]
_CHUNK = 1 << 20  # a mapped body is hashed a slice at a time, never copied whole


def fingerprint(body: Body, content_type: str, query: str) -> Fingerprint:
    """What a key is bound to: the content type and query as sent, the body's length and a
    64-bit SipHash of each MiB of it: CPython's ``hash()`` of bytes, keyed with the
    process's random 128-bit secret, ~5 GB/s where BLAKE2b ran ~1 GB/s (1.1 µs of every
    1 KB record). Enough because all it guards against is a client re-using a key for a
    different body by mistake: two such bodies of the same length agree by chance once in
    2**64, and, the key being secret, cannot be made to agree on purpose without seeing
    hashes, which nothing returns. (Under a fixed ``PYTHONHASHSEED`` the key is known and
    a determined caller could craft a collision; holding the token, it can send any
    records anyway, and the collision only drops its own second body: one environment
    serves one function.)"""
    return (content_type, query, len(body),
            tuple([hash(body[at:at + _CHUNK]) for at in range(0, len(body), _CHUNK)]))


class KeyMismatch(Exception):
    """The key was used before for a different body."""


class IdempotencyCache:
    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_KEYS,
        ttl_s: float = DEFAULT_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_keys = max_keys
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def run(
        self, key: str, fingerprint: Fingerprint, process: Callable[[], Answer],
        *, wait_s: float,
    ) -> tuple[Answer, bool]:
        """The answer for ``key`` and whether it is a replay of an earlier one.

        ``process`` runs at most once per remembered key; a concurrent repeat waits up
        to ``wait_s`` for it. Raises KeyMismatch for a known key with another body and
        TimeoutError when the first request is still running after ``wait_s``."""
        deadline = self._monotonic() + wait_s
        while True:
            mine, entry = self._claim(key, fingerprint)
            if mine:
                return self._process(key, entry, process), False
            remaining = deadline - self._monotonic()
            if not entry.wait(max(0.0, remaining)):
                raise TimeoutError(key)
            if entry.answer is not None:
                return entry.answer, True
            # The first attempt accepted nothing and was forgotten: try ourselves.

    def _claim(self, key: str, fingerprint: Fingerprint) -> tuple[bool, _Entry]:
        now = self._monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.done() and now - entry.born > self._ttl_s:
                del self._entries[key]
                entry = None
            if entry is not None:
                if entry.fingerprint != fingerprint:
                    raise KeyMismatch(key)
                self._entries.move_to_end(key)
                return False, entry
            entry = _Entry(fingerprint, now)
            self._entries[key] = entry
            self._trim()
            return True, entry

    def _trim(self) -> None:
        # Oldest first; an entry still in progress is never dropped (its repeat must wait).
        # Runs per request: stop at the excess instead of copying every key.
        excess = len(self._entries) - self._max_keys
        if excess <= 0:
            return
        done = []
        for old_key, old in self._entries.items():
            if old.done():
                done.append(old_key)
                if len(done) == excess:
                    break
        for old_key in done:
            del self._entries[old_key]

    def _process(self, key: str, entry: _Entry, process: Callable[[], Answer]) -> Answer:
        answer: Answer | None = None
        try:
            answer = process()
            return answer
        finally:
            with self._lock:
                if answer is not None and 200 <= answer.status < 300:
                    entry.answer = answer
                    entry.born = self._monotonic()
                elif self._entries.get(key) is entry:
                    del self._entries[key]
            entry.finish()
