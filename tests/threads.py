"""Run one function on several threads at once, as a handler's threads would share a client."""

from __future__ import annotations

import threading
from collections.abc import Callable


def in_threads(work: Callable[[int], None], count: int, *, timeout_s: float) -> list[BaseException]:
    """``work(n)`` for n in 0..count-1, each on a thread of its own, all started before any is
    joined; what they raised (none may be lost to a thread's silent death)."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout_s)
    return errors
