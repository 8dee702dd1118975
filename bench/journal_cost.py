"""What the crash-durability journal costs: CPU per accepted record, journal on vs off.

    PYTHONPATH=extension python -m bench.journal_cost [--rounds N] [--dir PATH]

In-process, no HTTP and no broker: for 300 B and 1 KB records in batches of 100 and
500, each round parses and validates a request body with the handoff's own functions
(``kafka_relay.handoff.schema``), has the ledger accept the batch (journal on: one
``os.write`` before the records are owned) and then settles every record (delivered;
journal on: the emptied segment is deleted), which is the churn of ``flush=end``. CPU time
(``time.process_time``), journal on and off interleaved, medians over the rounds. The
ratio is the journal's extra CPU (accept + settle) over the handoff's CPU per record
without it (parse + validate + accept): the HTTP server's own work is left out, so the
real share is smaller.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kafka_relay.delivery.journal import Journal
from kafka_relay.delivery.ledger import Ledger, Limits
from kafka_relay.handoff.schema import parse_body, validate
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import Outcome
from kafka_relay.record import IdSource

SIZES = (300, 1024)
BATCHES = (100, 500)


@dataclass(frozen=True)
class Cost:
    """Median CPU µs per record."""

    handoff: float  # parse + validate + accept, journal off
    accept_off: float
    accept_on: float
    settle_off: float
    settle_on: float

    @property
    def journal(self) -> float:
        return (self.accept_on + self.settle_on) - (self.accept_off + self.settle_off)

    @property
    def share(self) -> float:
        return self.journal / self.handoff


def _body(size: int, batch: int) -> bytes:
    """A JSON request of ``batch`` records of about ``size`` bytes (key + value)."""
    pad = "x" * max(1, size - 20)
    return json.dumps({"records": [{"key": f"key-{i:06d}", "value": pad}
                                   for i in range(batch)]}).encode()


def _round(body: bytes, ledger: Ledger, ids: IdSource) -> tuple[float, float, float]:
    """CPU seconds of (parse + validate, accept, settle) for one batch."""
    clock = time.process_time
    t0 = clock()
    records = validate(parse_body(body, "application/json"), default_topic="bench",
                       new_ids=ids.take, request_id="req", now_ms=0)
    t1 = clock()
    ledger.accept(records)
    t2 = clock()
    ledger.settle(records, Outcome.DELIVERED)  # as the pump does, once per poll round
    t3 = clock()
    return t1 - t0, t2 - t1, t3 - t2


def measure(size: int, batch: int, *, rounds: int, directory: Path) -> Cost:
    body = _body(size, batch)
    limits = Limits(records=10 * batch, bytes=10 * batch * (size + 100))
    journal = Journal(directory / f"j-{size}-{batch}", JsonLogger(stream=io.StringIO()))
    assert journal.open(), journal.error
    ledgers = {False: Ledger(limits, retry_after_ms=100),
               True: Ledger(limits, retry_after_ms=100, journal=journal)}
    ids = IdSource()
    samples: dict[tuple[bool, int], list[float]] = {(on, part): [] for on in (False, True)
                                                    for part in range(3)}
    for _ in range(3):  # warm-up: caches, first segment
        for ledger in ledgers.values():
            _round(body, ledger, ids)
    for _ in range(rounds):
        for on, ledger in ledgers.items():
            for part, seconds in enumerate(_round(body, ledger, ids)):
                samples[(on, part)].append(seconds * 1e6 / batch)
    journal.release(remove=True)

    def median(on: bool, part: int) -> float:
        return statistics.median(samples[(on, part)])

    return Cost(handoff=median(False, 0) + median(False, 1), accept_off=median(False, 1),
                accept_on=median(True, 1), settle_off=median(False, 2),
                settle_on=median(True, 2))


def report(results: Sequence[tuple[int, int, Cost]], out: Callable[[str], None]) -> float:
    out(f"{'record':>7} {'batch':>5} {'handoff µs/rec':>14} {'accept off/on':>14} "
        f"{'settle off/on':>14} {'journal µs/rec':>14} {'share':>6}")
    for size, batch, cost in results:
        out(f"{size:>6}B {batch:>5} {cost.handoff:>14.2f} "
            f"{cost.accept_off:>6.2f}/{cost.accept_on:<7.2f} "
            f"{cost.settle_off:>6.2f}/{cost.settle_on:<7.2f} {cost.journal:>14.2f} "
            f"{cost.share:>6.1%}")
    worst = max(cost.share for _, _, cost in results)
    # Reported, not a switch: the journal is on by default (nothing a 202 answered may be
    # lost to a killed extension); KAFKA_RELAY_JOURNAL=off trades that for this CPU.
    out(f"worst share {worst:.1%} of the handoff's CPU (parse + validate + accept; HTTP and "
        "delivery left out)")
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal_cost")
    parser.add_argument("--rounds", type=int, default=200, help="batches per case and mode")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the journal goes (default: a temp dir under $TMPDIR)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="journal-cost-", dir=args.dir) as tmp:
        results = [(size, batch, measure(size, batch, rounds=args.rounds, directory=Path(tmp)))
                   for size in SIZES for batch in BATCHES]
    report(results, print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
