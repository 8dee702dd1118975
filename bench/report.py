"""Everything one bench run measured, checked against the targets, as a table and as JSON."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.extension import DrainResult, HandoffResult, InitResult
from bench.invocations import ScenarioResult
from bench.stats import Check, factor

TARGET_RTT_MS = 20.0  # the invocation and drain targets hold for a remote-like cluster
LOCAL_RTT_MS = 0.0  # throughput targets are for the local broker
MB = 1024  # kB per MB (the kernel reports memory in kB)


@dataclass
class BenchResults:
    options: dict[str, Any]
    invocations: list[ScenarioResult] = field(default_factory=list)
    handoff: list[HandoffResult] = field(default_factory=list)
    init: list[InitResult] = field(default_factory=list)
    drain: DrainResult | None = None
    layer_sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def scenario(self, name: str, rtt_ms: float) -> ScenarioResult | None:
        return next((r for r in self.invocations if r.name == name and r.rtt_ms == rtt_ms),
                    None)

    def handoff_at(self, rtt_ms: float) -> HandoffResult | None:
        return next((h for h in self.handoff if h.rtt_ms == rtt_ms), None)

    def init_at(self, rtt_ms: float) -> InitResult | None:
        return next((i for i in self.init if i.rtt_ms == rtt_ms), None)


# -- ratios and targets --------------------------------------------------------------------------

@dataclass(frozen=True)
class Ratio:
    """baseline ÷ kafka-relay of one statistic of one metric; ``want`` None: for information."""

    label: str
    metric: str  # "caller_ms" | "billed_ms"
    baseline: str
    relay: str
    want: float | None
    stat: str = "median"  # a Summary field

    def of(self, results: BenchResults, rtt_ms: float) -> float | None:
        base, mine = results.scenario(self.baseline, rtt_ms), results.scenario(self.relay, rtt_ms)
        if base is None or mine is None:
            return None
        return factor(getattr(getattr(base, self.metric), self.stat),
                      getattr(getattr(mine, self.metric), self.stat))


RATIOS: tuple[Ratio, ...] = (
    Ratio("caller-visible: (1) seed ÷ (3) end", "caller_ms", "seed", "end", 50),
    Ratio("caller-visible: (2) global ÷ (3) end", "caller_ms", "global", "end", 20),
    Ratio("billed: (1) seed ÷ (3) end", "billed_ms", "seed", "end", 5),
    Ratio("billed: (2) global ÷ (4) periodic", "billed_ms", "global", "periodic", 3),
    # periodic bills a flush now and then: the mean is what a busy function pays
    Ratio("billed mean: (2) global ÷ (4) periodic", "billed_ms", "global", "periodic", None,
          stat="mean"),
    Ratio("billed: (2) global ÷ (3) end", "billed_ms", "global", "end", None),
)


def checks(results: BenchResults) -> list[Check]:
    out = [
        Check(f"{r.label} @ {TARGET_RTT_MS:g} ms RTT", r.of(results, TARGET_RTT_MS), ">=",
              r.want, "x", f"{r.stat}s, measured side by side")
        for r in RATIOS if r.want is not None
    ]
    local = results.handoff_at(LOCAL_RTT_MS)
    out += [
        Check("handoff client → extension (202s)",
              local.handoff_rps.median if local else None, ">=", 100_000, "records/s",
              f"batches of {local.batch_records} x {local.record_bytes} B" if local else ""),
        Check("end to end to the local broker (flush included)",
              local.e2e_rps.median if local else None, ">=", 50_000, "records/s"),
    ]
    init = results.init_at(TARGET_RTT_MS) or results.init_at(LOCAL_RTT_MS)
    out.append(Check("extension init: process start → init.ready",
                     init.ready_ms.median if init else None, "<=", 250, "ms",
                     f"median at {init.rtt_ms:g} ms RTT" if init else ""))
    memory = local or (results.handoff[0] if results.handoff else None)
    out += [
        Check("extension RSS idle", memory.rss_idle_kb / MB if memory else None, "<=", 60, "MB"),
        Check(f"extension RSS after {memory.records_total if memory else 100_000:,} records",
              memory.rss_after_kb / MB if memory else None, "<=", 60, "MB",
              f"peak {memory.hwm_kb / MB:.1f} MB" if memory else ""),
    ]
    drain = results.drain
    out += [
        Check(f"SHUTDOWN drain of {drain.records if drain else 10_000:,} records @ "
              f"{drain.rtt_ms if drain else TARGET_RTT_MS:g} ms RTT",
              drain.shutdown_ms.max if drain else None, "<=", 1_800, "ms", "worst sample"),
        Check("SHUTDOWN drain: records lost or unaccounted",
              _drain_losses(drain) if drain else None, "<=", 0, "records"),
    ]
    if results.invocations:
        lost = sum(r.lost for r in results.invocations)
        unaccounted = sum(int((r.relay_summary or {}).get("unaccounted", 0))
                          for r in results.invocations)
        out.append(Check("invocation scenarios: records lost or unaccounted",
                         float(lost + unaccounted), "<=", 0, "records"))
    return out


def _drain_losses(drain: DrainResult) -> float:
    return float(drain.lost + sum(s.unaccounted for s in drain.samples))


# -- the table ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                      for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    line.append("  ".join("-" * w for w in widths))
    for row in rows:
        line.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return line


def render(results: BenchResults, found: Sequence[Check]) -> str:
    out: list[str] = []
    if results.invocations:
        count = results.invocations[0].caller_ms.count
        out += [f"Per invocation: {results.options.get('records', 100)} x "
                f"{results.options.get('record_bytes', 1024)} B records, {count} measured "
                "invocations per scenario, scenarios interleaved", ""]
        out += _rows(
            ("scenario", "RTT ms", "caller med", "caller p99", "billed med", "billed p99",
             "billed mean", "every ms", "records/s", "lost", "errors"),
            [(r.title, f"{r.rtt_ms:g}", _num(r.caller_ms.median, 2), _num(r.caller_ms.p99, 2),
              _num(r.billed_ms.median, 0), _num(r.billed_ms.p99, 0), _num(r.billed_ms.mean),
              _num(r.pace_ms, 0),
              _num(r.records_per_s, 0) if r.records else "—",
              str(r.lost), str(len(r.errors))) for r in results.invocations])
        rtts = sorted({r.rtt_ms for r in results.invocations}, reverse=True)
        out += ["", "Ratios (baseline ÷ kafka-relay, medians unless named, same run)", ""]
        out += _rows(("ratio", *[f"@ {rtt:g} ms" for rtt in rtts], "target"),
                     [(r.label, *[_num(r.of(results, rtt)) + "x" for rtt in rtts],
                       f"≥ {r.want:g}x" if r.want is not None else "(info)")
                      for r in RATIOS])
    if results.handoff:
        out += ["", "Handoff (in a handler, to the real extension)", ""]
        out += _rows(("RTT ms", "records", "202s/s med", "delivered/s med", "lost",
                      "RSS idle MB", "RSS after MB", "peak MB"),
                     [(f"{h.rtt_ms:g}", f"{h.records_total:,}", _num(h.handoff_rps.median, 0),
                       _num(h.e2e_rps.median, 0), str(h.lost), _num(h.rss_idle_kb / MB),
                       _num(h.rss_after_kb / MB), _num(h.hwm_kb / MB))
                      for h in results.handoff])
    if results.init:
        out += ["", "Extension init (ms)", ""]
        out += _rows(("RTT ms", "samples", "start→ready med", "max", "kernel start→ready med",
                      "whole init med"),
                     [(f"{i.rtt_ms:g}", str(i.ready_ms.count), _num(i.ready_ms.median),
                       _num(i.ready_ms.max), _num(i.kernel_ready_ms.median),
                       _num(i.environment_init_ms.median)) for i in results.init])
    if results.drain:
        d = results.drain
        out += ["", f"SHUTDOWN drain, {d.records:,} records, flush 'shutdown', "
                f"{d.rtt_ms:g} ms RTT", ""]
        out += _rows(("sample", "shutdown ms", "extension ms", "pending at freeze", "drained",
                      "delivered", "spilled", "unaccounted", "killed"),
                     [(str(n + 1), _num(s.shutdown_ms), _num(s.extension_ms, 0),
                       str(s.pending_at_freeze), str(s.drained), str(s.delivered),
                       str(s.spilled), str(s.unaccounted), "yes" if s.killed else "no")
                      for n, s in enumerate(d.samples)])
        out.append(f"lost on the topic: {d.lost}")
    if results.layer_sizes:
        out += ["", "Layer zip (dist/manifest.json)", ""]
        out += _rows(("arch", "zipped MB", "unzipped MB"),
                     [(arch, _num(s["zipped_bytes"] / 2**20, 2),
                       _num(s["unzipped_bytes"] / 2**20, 2))
                      for arch, s in sorted(results.layer_sizes.items())])
    out += ["", "Targets", ""]
    out += _rows(("target", "measured", "wanted", "verdict"),
                 [(c.label, f"{_num(c.measured)} {c.unit}",
                   f"{c.comparison} {c.target:,g} {c.unit}", c.verdict) for c in found])
    return "\n".join(out)


def to_json(results: BenchResults, found: Sequence[Check]) -> dict[str, Any]:
    data = dataclasses.asdict(results)
    data["checks"] = [{**dataclasses.asdict(c), "met": c.met, "verdict": c.verdict}
                      for c in found]
    data["ratios"] = {
        f"{rtt:g}ms": {r.label: r.of(results, rtt) for r in RATIOS}
        for rtt in sorted({r.rtt_ms for r in results.invocations})
    }
    return data
