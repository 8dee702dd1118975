"""The bench's statistics, ratios, target checks and table, on synthetic numbers."""

from __future__ import annotations

import json
import math

import pytest

from bench.extension import DrainResult, DrainSample, HandoffResult
from bench.invocations import CASES, ScenarioResult, Skipped
from bench.model import BenchResults
from bench.outage import OutageResult
from bench.report import render, to_json
from bench.stats import Check, NoSamples, Summary, factor, percentile
from bench.targets import checks, factor_text, ratio, relay_default


def _scenario(name: str, memory_mb: int, rtt_ms: float, *, caller: float, billed: float,
              cpu_us: float = 10.0, lost: int = 0) -> ScenarioResult:
    title = next(c.title for c in CASES if c.name == name)
    return ScenarioResult(
        name=name, title=title, memory_mb=memory_mb, rtt_ms=rtt_ms, quota_vcpus=memory_mb / 1769,
        caller_ms=Summary.of([caller] * 3), billed_ms=Summary.of([billed] * 3),
        cpu_ms=Summary.of([cpu_us / 10] * 3), cpu_runtime_us_per_record=cpu_us / 2,
        cpu_extensions_us_per_record=cpu_us / 2, pace_ms=50.0, records=300, lost=lost,
        duplicates=0, errors=[])


def _results(*, auto: bool, lost: int = 0) -> BenchResults:
    results = BenchResults(options={"records": 100, "record_bytes": 1024, "invocations": 3})
    results.invocations = [
        _scenario("reused", 256, 1, caller=10, billed=11, cpu_us=20),
        _scenario("end", 256, 1, caller=6, billed=14, cpu_us=30, lost=lost),
        _scenario("reused", 1769, 20, caller=25, billed=26),
        _scenario("per-invocation", 1769, 20, caller=600, billed=601),
        _scenario("end", 1769, 20, caller=2, billed=27),
    ]
    if auto:
        results.invocations += [
            _scenario("auto", 256, 1, caller=5, billed=9, cpu_us=22),
            _scenario("auto", 1769, 20, caller=2.5, billed=4),
        ]
    else:
        results.skipped = [Skipped("auto", "kafka-relay auto", m, "skipped: not supported by "
                                   "this build") for m in (256, 1769)]
    return results


def _by_label(found: list[Check]) -> dict[str, Check]:
    return {c.label: c for c in found}


def test_percentile_is_the_nearest_rank_an_observed_value() -> None:
    samples = [float(n) for n in range(1, 201)]  # 1..200
    assert percentile(samples, 99) == 198.0
    assert percentile(samples, 50) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_percentile_and_summary_refuse_empty_samples_and_bad_ranks() -> None:
    with pytest.raises(NoSamples):
        percentile([], 99)
    with pytest.raises(NoSamples):
        Summary.of([])
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 0)


def test_summary_of_samples() -> None:
    summary = Summary.of([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (summary.count, summary.median, summary.p99) == (5, 3.0, 100.0)
    assert (summary.min, summary.max, summary.mean) == (1.0, 100.0, 22.0)


def test_factor_is_how_many_times_smaller_the_candidate_is() -> None:
    assert factor(600.0, 3.0) == 200.0
    assert factor(None, 3.0) is None
    assert factor(1.0, 0.0) == math.inf


def test_check_verdicts_for_at_most_at_least_and_missing() -> None:
    assert Check("a", 10.0, "<=", 10.0, "ms").verdict == "met"
    assert Check("b", 10.5, "<=", 10.0, "ms").verdict == "SHORT"
    assert Check("c", 99_999.0, ">=", 100_000.0, "records/s").met is False
    assert Check("d", None, ">=", 1.0, "x").verdict == "not run"


def test_ratio_is_candidate_over_baseline_at_the_same_memory_and_rtt() -> None:
    results = _results(auto=True)
    assert ratio(results, "caller_ms", "end", "reused", memory_mb=256, rtt_ms=1) == 0.6
    assert ratio(results, "cpu", "end", "reused", memory_mb=256, rtt_ms=1) == 1.5
    assert ratio(results, "caller_ms", "end", "reused", memory_mb=256, rtt_ms=20) is None
    assert ratio(results, "billed_ms", "wait", "reused", memory_mb=256, rtt_ms=1) is None


def test_the_default_relay_mode_is_auto_where_the_build_has_it_else_end() -> None:
    assert relay_default(_results(auto=True)) == "auto"
    assert relay_default(_results(auto=False)) == "end"
    assert ratio(_results(auto=True), "caller_ms", "relay", "reused", memory_mb=256,
                 rtt_ms=1) == 0.5
    assert ratio(_results(auto=False), "caller_ms", "relay", "reused", memory_mb=256,
                 rtt_ms=1) == 0.6


def test_issue_targets_marked_met_or_short_with_auto() -> None:
    found = _by_label(checks(_results(auto=True)))
    cpu = found["CPU per record: relay total (auto) ÷ reused @ 256 MB, 1 ms RTT"]
    assert cpu.measured == pytest.approx(1.1)
    assert cpu.verdict == "met"
    handler = found["handler: auto ÷ reused @ 256 MB, 1 ms RTT"]
    assert (handler.measured, handler.verdict) == (0.5, "met")
    billed = found["billed: auto ÷ reused @ 256 MB, 1 ms RTT"]
    assert billed.measured == pytest.approx(9 / 11)
    assert billed.verdict == "met"
    remote = found["handler: auto ÷ reused @ 1769 MB, 20 ms RTT"]
    assert (remote.measured, remote.verdict) == (0.1, "met")
    remote_billed = found["billed: auto ÷ reused @ 1769 MB, 20 ms RTT"]
    assert remote_billed.measured == pytest.approx(4 / 26)
    assert remote_billed.verdict == "met"
    seed = found["handler: auto ÷ per-invocation @ 1769 MB, 20 ms RTT"]
    assert seed.verdict == "SHORT"  # 2.5 / 600 > 1/300


def test_fixed_cost_and_per_record_checks_take_the_empty_handler_as_the_floor() -> None:
    results = _results(auto=True)
    results.invocations += [  # the references' CPU is per invocation (they send nothing)
        _scenario("floor", 256, 1, caller=0.7, billed=2, cpu_us=900.0),
        _scenario("relay-idle", 256, 1, caller=1.5, billed=3, cpu_us=1400.0),
    ]
    found = _by_label(checks(results))
    at = " @ 256 MB, 1 ms RTT"
    extension = found[f"extension CPU per 0-record invocation{at}"]
    assert extension.measured == pytest.approx(0.7)
    assert extension.verdict == "SHORT"
    end_call = found[f"handler CPU of the end call (0 records, over the empty handler){at}"]
    assert end_call.measured == pytest.approx(0.25)
    assert end_call.verdict == "met"
    client = found[f"client CPU per record (auto, over the empty handler){at}"]
    assert client.measured == pytest.approx(11 - 450 / 100)
    assert client.verdict == "met"
    per_record = found[f"extension CPU per record (auto, its fixed cost included){at}"]
    assert (per_record.measured, per_record.verdict) == (11, "met")


def test_fixed_cost_checks_are_not_run_without_their_references() -> None:
    found = _by_label(checks(_results(auto=True)))
    fixed = found["extension CPU per 0-record invocation @ 256 MB, 1 ms RTT"]
    client = found["client CPU per record (auto, over the empty handler) @ 256 MB, 1 ms RTT"]
    assert (fixed.verdict, client.verdict) == ("not run", "not run")


def test_a_skipped_auto_leaves_its_targets_not_run_with_the_reason() -> None:
    found = _by_label(checks(_results(auto=False)))
    billed = found["billed: auto ÷ reused @ 256 MB, 1 ms RTT"]
    assert (billed.measured, billed.verdict) == (None, "not run")
    assert "not supported by this build" in billed.note
    handler = found["handler: end ÷ reused @ 256 MB, 1 ms RTT"]
    assert (handler.measured, handler.verdict) == (0.6, "met")
    cpu = found["CPU per record: relay total (end) ÷ reused @ 256 MB, 1 ms RTT"]
    assert (cpu.measured, cpu.verdict) == (1.5, "SHORT")


def test_target_factors_print_as_fractions_where_they_are_ones() -> None:
    assert [factor_text(x) for x in (1 / 300, 1 / 5, 0.7, 1.2, 1.0)] == [
        "1/300x", "1/5x", "0.7x", "1.2x", "1x"]


def _outage(during: list[int]) -> OutageResult:
    return OutageResult(flush="end", memory_mb=1769, rtt_ms=1, outage_s=60,
                        baseline_billed_ms=15, during_billed_ms=during, after_billed_ms=[15],
                        records=700, lost=0, unaccounted=0)


def test_outage_overhead_counts_the_invocations_after_the_first() -> None:
    assert _outage([10_015, 55, 35]).overhead_after_first_ms == 30.0
    assert _outage([10_015, 55, 35]).first_overhead_ms == 10_000
    assert _outage([10_015]).overhead_after_first_ms is None
    results = _results(auto=True)
    results.outage = _outage([10_015, 10_015, 10_015])
    found = checks(results)
    overhead = next(c for c in found if c.label.startswith("broker down 60 s"))
    assert (overhead.measured, overhead.verdict) == (10_000, "SHORT")


def test_lost_records_fail_the_correctness_target() -> None:
    results = _results(auto=True, lost=2)
    results.unaccounted = 1
    lost = _by_label(checks(results))["invocation scenarios: records lost or unaccounted"]
    assert (lost.measured, lost.verdict) == (3.0, "SHORT")


def test_table_and_json_carry_every_measurement_and_verdict() -> None:
    results = _results(auto=False)
    results.handoff = [HandoffResult(
        memory_mb=1769, rtt_ms=0, batch_records=500, record_bytes=300,
        records_per_invocation=50_000, invocations=2, handoff_rps=Summary.of([120_000.0]),
        e2e_rps=Summary.of([60_000.0]), records_total=100_000, lost=0, rss_idle_kb=40 * 1024,
        rss_after_kb=70 * 1024, hwm_kb=72 * 1024)]
    sample = DrainSample(shutdown_ms=400.0, extension_ms=390.0, pending_at_freeze=10_000,
                         drained=10_000, delivered=10_000, spilled=0, unaccounted=0,
                         killed=False, memory_per_pending_byte=1.8)
    results.drain = DrainResult(memory_mb=256, rtt_ms=20, records=10_000, samples=[sample],
                                shutdown_ms=Summary.of([400.0]), lost=0)
    results.outage = _outage([10_015, 40])
    found = checks(results)
    table = render(results, found)
    assert "kafka-relay end" in table
    assert "0.6x" in table  # end ÷ reused handler at 256 MB, 1 ms
    assert "kafka-relay auto @ 256 MB: skipped: not supported by this build" in table
    assert "<= 1/300x" in table
    handoff = _by_label(found)["handoff client → extension @ 1769 MB"]
    assert (handoff.measured, handoff.verdict) == (120_000.0, "SHORT")
    rss_after = next(c for c in found if c.label.startswith("extension RSS after"))
    assert (rss_after.measured, rss_after.verdict) == (70.0, "SHORT")
    per_byte = next(c for c in found if c.label.startswith("extension memory per pending byte"))
    assert (per_byte.measured, per_byte.verdict) == (1.8, "SHORT")
    document = json.loads(json.dumps(to_json(results, found)))
    end = next(r for r in document["invocations"]
               if (r["name"], r["memory_mb"]) == ("end", 256))
    assert end["versus_reused"]["caller_ms"] == 0.6
    assert end["cpu_us_per_record"] == 30.0
    assert document["outage"]["overhead_after_first_ms"] == 25.0
    assert {c["verdict"] for c in document["checks"]} == {"met", "SHORT", "not run"}
    assert document["drain"]["samples"][0]["pending_at_freeze"] == 10_000
