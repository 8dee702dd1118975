"""One bench run as a table (with the ratios and verdicts) and as JSON."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from bench.invocations import ScenarioResult
from bench.model import BenchResults
from bench.stats import Check
from bench.targets import MB, RELAY_CASES, Metric, factor_text, ratio


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.3g}x"


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                      for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    line.append("  ".join("-" * w for w in widths))
    for row in rows:
        line.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return line


def _versus_reused(results: BenchResults, r: ScenarioResult, metric: Metric) -> str:
    if r.name not in RELAY_CASES:
        return ""
    return _x(ratio(results, metric, r.name, "reused", memory_mb=r.memory_mb,
                    rtt_ms=r.rtt_ms))


def _grid_order(r: ScenarioResult) -> tuple[int, float]:
    return r.memory_mb, r.rtt_ms


def _invocation_table(results: BenchResults) -> list[str]:
    opts = results.options
    out = [f"Per invocation: {opts.get('records', 100)} x {opts.get('record_bytes', 1024)} B "
           f"records; {opts.get('invocations')} measured invocations per case (per-invocation "
           f"producer: {opts.get('solo_invocations')}), cases interleaved; CPU = user + sys "
           "of the runtime and extension processes, µs per record (per invocation for the "
           "references, which send nothing); ratios ÷ the reused producer, same memory and RTT", ""]
    rows: list[tuple[str, ...]] = []
    for r in sorted(results.invocations, key=_grid_order):
        rows.append((
            r.title, f"{r.memory_mb}", f"{r.rtt_ms:g}", _num(r.caller_ms.median, 2),
            _num(r.caller_ms.p99, 1), _num(r.billed_ms.median, 0), _num(r.billed_ms.mean),
            _num(r.cpu_runtime_us_per_record, 1), _num(r.cpu_extensions_us_per_record, 1),
            _versus_reused(results, r, "caller_ms"), _versus_reused(results, r, "billed_ms"),
            _versus_reused(results, r, "cpu"), f"{r.lost}", f"{len(r.errors)}"))
    out += _rows(("case", "MB", "RTT ms", "handler med", "handler p99", "billed med",
                  "billed mean", "CPU runtime", "CPU ext", "handler ÷", "billed ÷", "CPU ÷",
                  "lost", "errors"), rows)
    out += [f"{s.title} @ {s.memory_mb} MB: {s.reason}" for s in results.skipped]
    return out


def render(results: BenchResults, found: Sequence[Check]) -> str:
    out: list[str] = []
    if results.invocations or results.skipped:
        out += _invocation_table(results)
    if results.handoff:
        out += ["", "Handoff (in a handler, to the real extension, 0 ms RTT)", ""]
        out += _rows(("MB", "records", "202s/s med", "delivered/s med", "lost",
                      "RSS idle MB", "RSS after MB", "peak MB"),
                     [(f"{h.memory_mb}", f"{h.records_total:,}", _num(h.handoff_rps.median, 0),
                       _num(h.e2e_rps.median, 0), str(h.lost), _num(h.rss_idle_kb / MB),
                       _num(h.rss_after_kb / MB), _num(h.hwm_kb / MB))
                      for h in results.handoff])
    if results.init:
        out += ["", "Cold start: environment start → first invocation returned "
                f"({results.init[0].records} records), side by side (ms, medians)", ""]
        out += _rows(("MB", "RTT ms", "samples", "relay first", "in-handler first", "ratio",
                      "relay CPU", "in-handler CPU", "ext. start→ready", "ext. CPU→ready",
                      "ext. init CPU"),
                     [(f"{i.memory_mb}", f"{i.rtt_ms:g}", str(i.relay.first_ms.count),
                       _num(i.relay.first_ms.median), _num(i.in_handler.first_ms.median),
                       f"{i.first_ratio:.2f}x", _num(i.relay.first_cpu_ms.median),
                       _num(i.in_handler.first_cpu_ms.median), _num(i.ready_ms.median),
                       _num(i.ready_cpu_ms.median) if i.ready_cpu_ms else "—",
                       _num(i.extension_init_cpu_ms.median))
                      for i in results.init])
    if results.drain:
        d = results.drain
        out += ["", f"SHUTDOWN drain, {d.records:,} records, flush 'shutdown', "
                f"{d.memory_mb} MB, {d.rtt_ms:g} ms RTT", ""]
        out += _rows(("sample", "shutdown ms", "extension ms", "pending at freeze", "drained",
                      "delivered", "spilled", "unaccounted", "killed", "RSS / pending byte"),
                     [(str(n + 1), _num(s.shutdown_ms), _num(s.extension_ms, 0),
                       str(s.pending_at_freeze), str(s.drained), str(s.delivered),
                       str(s.spilled), str(s.unaccounted), "yes" if s.killed else "no",
                       f"{s.memory_per_pending_byte:.2f}")
                      for n, s in enumerate(d.samples)])
        out.append(f"lost on the topic: {d.lost}")
    if results.outage:
        o = results.outage
        out += ["", f"Broker down {o.outage_s:g} s, flush '{o.flush}', {o.memory_mb} MB, "
                f"{o.rtt_ms:g} ms RTT: billed ms per invocation", "",
                f"before (median): {o.baseline_billed_ms:g}",
                f"during ({len(o.during_billed_ms)}): {o.during_billed_ms}",
                f"after: {o.after_billed_ms}",
                f"records {o.records:,}, lost {o.lost}, unaccounted {o.unaccounted}",
                f"refused (RelayBusy, nothing accepted): {o.refused} invocations"
                + (f", the last: {o.refusal}" if o.refused else "")]
    if results.layer_sizes:
        out += ["", "Layer zip (dist/manifest.json)", ""]
        out += _rows(("arch", "zipped MB", "unzipped MB"),
                     [(arch, _num(s["zipped_bytes"] / 2**20, 2),
                       _num(s["unzipped_bytes"] / 2**20, 2))
                      for arch, s in sorted(results.layer_sizes.items())])
    out += ["", "Targets", ""]
    out += _rows(("target", "measured", "wanted", "verdict", "note"),
                 [(c.label, _measured(c), _wanted(c), c.verdict, c.note) for c in found])
    return "\n".join(out)


def _measured(c: Check) -> str:
    return _x(c.measured) if c.unit == "x" else f"{_num(c.measured)} {c.unit}"


def _wanted(c: Check) -> str:
    if c.unit == "x":
        return f"{c.comparison} {factor_text(c.target)}"
    return f"{c.comparison} {c.target:,g} {c.unit}"


def to_json(results: BenchResults, found: Sequence[Check]) -> dict[str, Any]:
    data = dataclasses.asdict(results)
    for row, r in zip(data["invocations"], results.invocations, strict=True):
        row["cpu_us_per_record"] = r.cpu_us_per_record
        row["versus_reused"] = {m: ratio(results, m, r.name, "reused", memory_mb=r.memory_mb,
                                          rtt_ms=r.rtt_ms)
                                for m in ("caller_ms", "billed_ms", "cpu")}
    if results.outage is not None:
        data["outage"]["overhead_after_first_ms"] = results.outage.overhead_after_first_ms
        data["outage"]["worst_overhead_ms"] = results.outage.worst_overhead_ms
    data["checks"] = [{**dataclasses.asdict(c), "met": c.met, "verdict": c.verdict}
                      for c in found]
    return data
