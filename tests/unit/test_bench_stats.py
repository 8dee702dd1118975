"""The bench's statistics, target checks and table, on synthetic numbers."""

from __future__ import annotations

import json
import math

import pytest

from bench.extension import DrainResult, DrainSample, HandoffResult
from bench.invocations import SCENARIOS, ScenarioResult
from bench.report import BenchResults, checks, render, to_json
from bench.stats import Check, NoSamples, Summary, factor, percentile


def _scenario(name: str, rtt_ms: float, caller: float, billed: float,
              lost: int = 0) -> ScenarioResult:
    title = next(s.title for s in SCENARIOS if s.name == name)
    return ScenarioResult(
        name=name, title=title, rtt_ms=rtt_ms, caller_ms=Summary.of([caller] * 3),
        billed_ms=Summary.of([billed] * 3), pace_ms=50.0, records=300, records_per_s=1000.0,
        lost=lost, duplicates=0, errors=[], shutdown_ms=5.0, relay_summary=None)


def _results(*, end_caller: float, lost: int = 0) -> BenchResults:
    results = BenchResults(options={"records": 100, "record_bytes": 1024})
    results.invocations = [
        _scenario("seed", 20, caller=600, billed=600),
        _scenario("global", 20, caller=24, billed=25),
        _scenario("end", 20, caller=end_caller, billed=30, lost=lost),
        _scenario("periodic", 20, caller=3, billed=5),
    ]
    return results


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


def test_ratio_targets_use_medians_of_the_same_run() -> None:
    found = {c.label: c for c in checks(_results(end_caller=2.0))}
    seed = found["caller-visible: (1) seed ÷ (3) end @ 20 ms RTT"]
    glob = found["caller-visible: (2) global ÷ (3) end @ 20 ms RTT"]
    billed = found["billed: (2) global ÷ (4) periodic @ 20 ms RTT"]
    assert (seed.measured, seed.verdict) == (300.0, "met")
    assert (glob.measured, glob.verdict) == (12.0, "SHORT")
    assert (billed.measured, billed.verdict) == (5.0, "met")
    assert found["handoff client → extension (202s)"].verdict == "not run"


def test_lost_records_fail_the_correctness_target() -> None:
    found = {c.label: c for c in checks(_results(end_caller=1.0, lost=2))}
    lost = found["invocation scenarios: records lost or unaccounted"]
    assert (lost.measured, lost.verdict) == (2.0, "SHORT")


def test_table_and_json_carry_every_measurement_and_verdict() -> None:
    results = _results(end_caller=1.0)
    results.handoff = [HandoffResult(
        rtt_ms=0, batch_records=500, record_bytes=300, records_per_invocation=50_000,
        invocations=2, handoff_rps=Summary.of([120_000.0]), e2e_rps=Summary.of([60_000.0]),
        records_total=100_000, lost=0, rss_idle_kb=40 * 1024, rss_after_kb=70 * 1024,
        hwm_kb=72 * 1024)]
    sample = DrainSample(shutdown_ms=400.0, extension_ms=390.0, pending_at_freeze=10_000,
                         drained=10_000, delivered=10_000, spilled=0, unaccounted=0,
                         killed=False)
    results.drain = DrainResult(rtt_ms=20, records=10_000, samples=[sample],
                                shutdown_ms=Summary.of([400.0]), lost=0)
    found = checks(results)
    table = render(results, found)
    assert "(3) kafka-relay end" in table
    assert "600.0x" in table  # seed ÷ end in the ratio table
    rss_after = next(c for c in found if c.label.startswith("extension RSS after"))
    assert (rss_after.measured, rss_after.verdict) == (70.0, "SHORT")
    document = json.loads(json.dumps(to_json(results, found)))
    assert document["ratios"]["20ms"]["caller-visible: (1) seed ÷ (3) end"] == 600.0
    assert {c["verdict"] for c in document["checks"]} == {"met", "SHORT", "not run"}
    assert document["drain"]["samples"][0]["pending_at_freeze"] == 10_000
