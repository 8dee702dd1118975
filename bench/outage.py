"""What a broker outage costs per invocation: the broker goes away for a bounded time while
the function keeps being invoked back to back, then comes back.

The extension runs its default flush mode (``auto`` where the build has it, else
``end``). Billed overhead is each invocation's billed time minus the median of the
invocations before the outage; the target is about the invocations after the
first one that met the outage. Afterwards every record of every invocation whose
records were accepted must be on the topic. An invocation whose records the extension
refused (its buffer full while Kafka is away: ``RelayBusy``, nothing accepted) is counted
and reported, as a handler that keeps such records itself would.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.infra import BenchError, Layers, Network, sandbox, start_or_unsupported
from bench.invocations import FLUSH
from devtools.sandbox import Sandbox
from kafka_relay.tools.table import events_named

BEFORE = 5  # invocations measured before the outage (its baseline)
AFTER = 5  # invocations after the broker is back, at least
# After them, invocations go on (as a live function's would) until the outage's backlog is
# delivered (the extension holds back no more than those invocations' records), at most this
# long: SHUTDOWN right after the outage would spill the backlog, not deliver it.
RECOVERY_S = 60.0
MAX_INVOCATIONS = 10_000  # bound on the invocations during the outage


@dataclass(frozen=True)
class OutageResult:
    flush: str
    memory_mb: int
    rtt_ms: float
    outage_s: float
    baseline_billed_ms: float  # median billed before the outage
    during_billed_ms: list[int]  # every invocation that started while the broker was away
    after_billed_ms: list[int]
    records: int
    lost: int
    unaccounted: int
    refused: int = 0  # invocations whose records the extension refused (RelayBusy)
    refusal: str = ""  # the last refusal's words

    @property
    def overhead_after_first_ms(self) -> float | None:
        """Mean billed overhead of the outage's invocations after the first (None: one or
        none started during the outage)."""
        later = self.during_billed_ms[1:]
        return statistics.fmean(later) - self.baseline_billed_ms if later else None

    @property
    def worst_overhead_ms(self) -> float | None:
        """The longest billed overhead of any invocation in or after the outage."""
        billed = self.during_billed_ms + self.after_billed_ms
        return max(billed) - self.baseline_billed_ms if billed else None

    @property
    def first_overhead_ms(self) -> float | None:
        first = self.during_billed_ms[:1]
        return first[0] - self.baseline_billed_ms if first else None


def run_outage(
    *, net: Network, layers: Layers, memory_mb: int, rtt_ms: float, outage_s: float,
    records: int, workdir: Path, progress: Callable[[str], None],
) -> OutageResult:
    net.set_rtt(rtt_ms)
    topic = net.create_topic(f"outage-{memory_mb}mb")
    run_id = uuid.uuid4().hex[:8]
    sent: list[int] = []
    refused: list[str] = []  # each refusal's words
    billed: dict[str, list[int]] = {"before": [], "during": [], "after": []}
    flush = "auto"

    def environment() -> Sandbox:
        return stack.enter_context(sandbox(
            net=net, layer=layers.relay, handler="relay_send", topic=topic, workdir=workdir,
            name=f"outage-{flush}-{memory_mb}mb", env={FLUSH: flush}, memory_mb=memory_mb,
            timeout_s=60.0))

    with ExitStack() as stack:
        sb = environment()
        if start_or_unsupported(sb, setting=FLUSH) is not None:
            flush = "end"
            sb = environment()
            sb.start()

        def invoke(phase: str) -> dict[str, Any]:
            n = sum(len(v) for v in billed.values())
            result = sb.invoke({"run": run_id, "n": n, "count": records, "size": 1024,
                                "refusable": True, "status": phase == "after"})
            payload = result.payload if isinstance(result.payload, dict) else {}
            if result.status != "success":
                raise BenchError(f"outage: invocation {n} ({phase}) failed: {result.error}; "
                                 f"see {sb.log_path}")
            if payload.get("accepted") == records:
                sent.append(n)
            elif payload.get("refused"):
                refused.append(str(payload["refused"]))
            billed[phase].append(result.billed_ms)
            return payload

        for _ in range(BEFORE):
            invoke("before")
        progress(f"  outage: broker away for {outage_s:g} s, invoking {flush} back to back")
        net.cut()
        back = threading.Timer(outage_s, net.restore)
        started = time.monotonic()
        back.start()
        try:
            while (time.monotonic() - started < outage_s
                   and len(billed["during"]) < MAX_INVOCATIONS):
                invoke("during")
        finally:
            back.join()
        recovered = time.monotonic()
        while True:
            held = _held(invoke("after")["status"])
            if len(billed["after"]) >= AFTER and (
                    held <= AFTER * records or time.monotonic() - recovered > RECOVERY_S):
                break
        sb.shutdown("spindown")
        summaries = events_named(sb.log_lines(), "shutdown.summary")
        unaccounted = int(summaries[-1].get("unaccounted", 0)) if summaries else records
    net.set_rtt(0)
    keys = [f"{run_id}-{n}-{i}" for n in sent for i in range(records)]
    delivery = net.delivery(topic, keys, timeout=30 + len(keys) / 5000)
    return OutageResult(
        flush=flush, memory_mb=memory_mb, rtt_ms=rtt_ms, outage_s=outage_s,
        baseline_billed_ms=statistics.median(billed["before"]),
        during_billed_ms=billed["during"], after_billed_ms=billed["after"],
        records=len(keys), lost=delivery.lost, unaccounted=unaccounted,
        refused=len(refused), refusal=refused[-1] if refused else "")


def _held(status: dict[str, Any]) -> int:
    """Records the extension holds back (in memory and in its outage spool), by /v1/status."""
    return int(status.get("pending", 0)) + int(status.get("overflow", {}).get("records", 0))
