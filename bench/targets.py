"""Issue 14's targets as ratios and checks over one run's results. Pure functions.

Every ratio is candidate ÷ baseline of one statistic, measured side by side in the
same run (lower is better: 0.5x = half the baseline's). ``relay`` as a candidate is
the default flush mode: ``auto`` where this build has it, else ``end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from bench.coldstart import InitResult
from bench.invocations import ScenarioResult
from bench.model import BenchResults
from bench.stats import Check

MB = 1024  # kB per MB (the kernel reports memory in kB)
RELAY = "relay"  # the default flush mode: auto, else end
RELAY_CASES = ("end", "periodic", "wait", "auto")
Metric = Literal["caller_ms", "billed_ms", "cpu"]
METRIC_NAMES: dict[Metric, str] = {"caller_ms": "handler", "billed_ms": "billed",
                                   "cpu": "CPU per record"}


def relay_default(results: BenchResults) -> str:
    """The case standing for kafka-relay's default: ``auto`` when it ran, else ``end``."""
    return "auto" if any(r.name == "auto" for r in results.invocations) else "end"


def value(result: ScenarioResult, metric: Metric) -> float:
    """Medians of the times; CPU per record is a mean (periodic work lands on some
    invocations only, and the total is what a busy function pays)."""
    if metric == "cpu":
        return result.cpu_us_per_record
    return getattr(result, metric).median  # type: ignore[no-any-return]


def ratio(results: BenchResults, metric: Metric, candidate: str, baseline: str, *,
          memory_mb: int, rtt_ms: float) -> float | None:
    """candidate ÷ baseline, None when either did not run."""
    name = relay_default(results) if candidate == RELAY else candidate
    mine = results.scenario(name, memory_mb, rtt_ms)
    base = results.scenario(baseline, memory_mb, rtt_ms)
    if mine is None or base is None:
        return None
    denominator = value(base, metric)
    return math.inf if denominator <= 0 else value(mine, metric) / denominator


@dataclass(frozen=True)
class Target:
    metric: Metric
    candidate: str  # a case name or RELAY
    baseline: str
    memory_mb: int
    rtt_ms: float
    want: float  # candidate ÷ baseline at most this

    def label(self, results: BenchResults) -> str:
        name = relay_default(results) if self.candidate == RELAY else self.candidate
        what = f"relay total ({name})" if self.metric == "cpu" else name
        return (f"{METRIC_NAMES[self.metric]}: {what} ÷ {self.baseline} @ {self.memory_mb} MB, "
                f"{self.rtt_ms:g} ms RTT")

    def check(self, results: BenchResults) -> Check:
        measured = ratio(results, self.metric, self.candidate, self.baseline,
                         memory_mb=self.memory_mb, rtt_ms=self.rtt_ms)
        note = "medians, side by side" if self.metric != "cpu" else "user + sys, means"
        if measured is None and self.candidate != RELAY:
            note = results.skipped_reason(self.candidate) or "not measured"
        return Check(self.label(results), measured, "<=", self.want, "x", note)


TARGETS: tuple[Target, ...] = (
    Target("cpu", RELAY, "reused", 256, 1.0, 1.2),
    Target("caller_ms", RELAY, "reused", 256, 1.0, 0.7),
    Target("billed_ms", "auto", "reused", 256, 1.0, 1.0),
    Target("caller_ms", RELAY, "reused", 256, 5.0, 0.5),
    Target("billed_ms", "auto", "reused", 256, 5.0, 0.8),
    Target("caller_ms", RELAY, "reused", 1769, 20.0, 1 / 10),
    Target("billed_ms", "auto", "reused", 1769, 20.0, 1 / 5),
    Target("caller_ms", RELAY, "per-invocation", 1769, 20.0, 1 / 300),
)
HANDOFF_MEMORY_MB = 1769
HANDOFF_RPS = 200_000
E2E_RPS = 100_000
READY_CPU_MS = 80
COLD_START_RATIO = 1.1
OUTAGE_OVERHEAD_MS = 50
OUTAGE_WORST_MS = 1_000
# Deliverables 1 and 2 at 256 MB, 1 ms RTT: the extension's CPU for a 0-record invocation and
# the handler's for its end call (ms); CPU per record in the client and in the extension (µs).
FIXED_AT = (256, 1.0)
FIXED_EXTENSION_MS = 0.5
FIXED_END_CALL_MS = 0.3
CLIENT_US_PER_RECORD = 12
EXTENSION_US_PER_RECORD = 15


def factor_text(x: float) -> str:
    """A target factor as people write it: 1.2x, 0.7x, 1/300x."""
    inverse = 1 / x if x > 0 else math.inf
    if x < 1 and math.isfinite(inverse) and math.isclose(inverse, round(inverse)):
        return f"1/{round(inverse)}x"
    return f"{x:g}x"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def _fixed_and_per_record(results: BenchResults) -> list[Check]:
    """The extension's and the end call's CPU per 0-record invocation (``relay-idle`` over the
    empty handler), and CPU per record on each side of the handoff in the default mode. The
    client's is the handler's CPU above the empty handler's (the runtime's own work per
    invocation is the function's, with or without kafka-relay); the extension's is all of
    its CPU, its fixed cost per invocation included."""
    memory_mb, rtt_ms = FIXED_AT
    at = f" @ {memory_mb} MB, {rtt_ms:g} ms RTT"
    idle = results.scenario("relay-idle", memory_mb, rtt_ms)
    floor = results.scenario("floor", memory_mb, rtt_ms)
    name = relay_default(results)
    relay = results.scenario(name, memory_mb, rtt_ms)
    records = results.options.get("records", 100)
    client = (relay.cpu_runtime_us_per_record - floor.cpu_runtime_us_per_record / records
              if relay is not None and floor is not None and records else None)
    return [
        Check(f"extension CPU per 0-record invocation{at}",
              idle.cpu_extensions_us_per_record / 1000 if idle else None, "<=",
              FIXED_EXTENSION_MS, "ms", "mean, every thread"),
        Check(f"handler CPU of the end call (0 records, over the empty handler){at}",
              (idle.cpu_runtime_us_per_record - floor.cpu_runtime_us_per_record) / 1000
              if idle and floor else None, "<=", FIXED_END_CALL_MS, "ms", "means"),
        Check(f"client CPU per record ({name}, over the empty handler){at}", client, "<=",
              CLIENT_US_PER_RECORD, "µs", "mean"),
        Check(f"extension CPU per record ({name}, its fixed cost included){at}",
              relay.cpu_extensions_us_per_record if relay else None, "<=",
              EXTENSION_US_PER_RECORD, "µs", "mean"),
    ]


def checks(results: BenchResults) -> list[Check]:
    out = [t.check(results) for t in TARGETS]
    out += _fixed_and_per_record(results)
    handoff = results.handoff_at(HANDOFF_MEMORY_MB)
    shape = f"{handoff.batch_records} x {handoff.record_bytes} B batches" if handoff else ""
    out += [
        Check(f"handoff client → extension @ {HANDOFF_MEMORY_MB} MB",
              handoff.handoff_rps.median if handoff else None, ">=", HANDOFF_RPS, "records/s",
              shape),
        Check(f"end to end to the local broker @ {HANDOFF_MEMORY_MB} MB",
              handoff.e2e_rps.median if handoff else None, ">=", E2E_RPS, "records/s",
              "flush included"),
    ]
    inits: list[InitResult | None] = [*results.init] or [None]
    for init in inits:
        at = f" @ {init.memory_mb} MB, {init.rtt_ms:g} ms RTT" if init else ""
        out += [
            Check(f"cold start to the first return: relay ÷ in-handler producer{at}",
                  init.first_ratio if init else None, "<=", COLD_START_RATIO, "x",
                  "medians, side by side"),
            Check(f"extension CPU: launch → ready (its first /next){at}",
                  _ready_cpu_ms(init) if init else None, "<=", READY_CPU_MS, "ms",
                  "median, the process's own count, every thread, launcher included"),
        ]
    memory = handoff or (results.handoff[0] if results.handoff else None)
    out += [
        Check("extension RSS idle", memory.rss_idle_kb / MB if memory else None, "<=", 60, "MB"),
        Check(f"extension RSS after {memory.records_total if memory else 100_000:,} records",
              memory.rss_after_kb / MB if memory else None, "<=", 60, "MB",
              f"peak {memory.hwm_kb / MB:.1f} MB" if memory else ""),
    ]
    drain = results.drain
    out += [
        Check(f"SHUTDOWN drain of {drain.records if drain else 5_000:,} records"
              + (f" @ {drain.memory_mb} MB, {drain.rtt_ms:g} ms RTT" if drain else ""),
              drain.shutdown_ms.max if drain else None, "<=", 1_800, "ms", "worst sample"),
        Check("SHUTDOWN drain: records lost or unaccounted",
              float(drain.lost + sum(s.unaccounted for s in drain.samples)) if drain else None,
              "<=", 0, "records"),
        Check("extension memory per pending byte (records held by a stalled broker)",
              max(s.memory_per_pending_byte for s in drain.samples) if drain else None,
              "<=", 1.5, "x", "RSS growth ÷ pending bytes, worst sample"),
    ]
    outage = results.outage
    out += [
        Check(f"broker down {outage.outage_s:g} s ({outage.flush}): billed overhead per "
              "invocation after the first" if outage else "broker down: billed overhead",
              outage.overhead_after_first_ms if outage else None, "<=", OUTAGE_OVERHEAD_MS,
              "ms", f"the first: {_ms(outage.first_overhead_ms)}" if outage else ""),
        Check("broker down: the worst invocation's billed overhead (during and after)",
              outage.worst_overhead_ms if outage else None, "<=", OUTAGE_WORST_MS, "ms",
              "every invocation bounded, not only the mean"),
        Check("broker down: records lost or unaccounted",
              float(outage.lost + outage.unaccounted) if outage else None, "<=", 0, "records"),
    ]
    if results.invocations:
        lost = sum(r.lost for r in results.invocations)
        out.append(Check("invocation scenarios: records lost or unaccounted",
                         float(lost + results.unaccounted), "<=", 0, "records",
                         "read back from the topics"))
    return out


def _ready_cpu_ms(init: InitResult) -> float:
    """The extension's CPU when it sent its first /next (``init.ready``'s ``cpu_ms``). The
    cgroup's count covers the whole init phase: on demand the extension goes on assembling
    after its /next while the runtime still initializes."""
    cpu = init.ready_cpu_ms or init.extension_init_cpu_ms
    return cpu.median
