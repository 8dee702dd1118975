"""The per-invocation scenarios: two baselines and three kafka-relay modes, run side by side.

Every scenario gets its own sandbox and topic; all of them are started first, then
invoked in rounds (the order rotating each round), so the machine's noise falls on
all of them alike. A ``solo`` scenario runs its rounds right after the others: the
seed pattern's ~0.6 s invocations would otherwise set everyone's pace, and the pace
decides how often ``periodic`` flushes. After the rounds each environment is shut
down (the relay drains) and its topic is read back by key.
"""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.infra import BenchError, Delivery, Layers, Network, sandbox
from bench.stats import Summary
from devtools.sandbox import InvokeResult, Sandbox
from kafka_relay.logs import events_named


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    handler: str
    relay: bool  # attach the real layer (extension included), else its python/ only
    env: tuple[tuple[str, str], ...] = ()
    event: tuple[tuple[str, Any], ...] = ()
    sends: bool = True  # produces the workload (else a reference point)
    solo: bool = False  # invoked in its own rounds, after the interleaved ones


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("floor", "(0) empty handler, no layer code", "empty", relay=False, sends=False),
    Scenario("seed", "(1) producer per invocation", "seed_per_invocation", relay=False,
             solo=True),
    Scenario("global", "(2) global producer, flush", "global_producer", relay=False),
    Scenario("end", "(3) kafka-relay end", "relay_send", relay=True,
             env=(("KAFKA_RELAY_FLUSH", "end"),)),
    Scenario("periodic", "(4) kafka-relay periodic:1000", "relay_send", relay=True,
             env=(("KAFKA_RELAY_FLUSH", "periodic:1000"),)),
    Scenario("wait", "(5) kafka-relay send(wait=True)", "relay_send", relay=True,
             env=(("KAFKA_RELAY_FLUSH", "end"),), event=(("wait", True),)),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


@dataclass(frozen=True)
class Workload:
    invocations: int  # measured per scenario
    warmup: int  # per scenario, before the measured ones (first-invoke costs stay out)
    count: int = 100  # records per invocation
    size: int = 1024  # bytes per record


@dataclass
class ScenarioRun:
    """One scenario at one round-trip time: samples as they come, then the verdicts."""

    scenario: Scenario
    rtt_ms: float
    topic: str
    run_id: str
    caller_ms: list[float] = field(default_factory=list)
    billed_ms: list[float] = field(default_factory=list)
    duration_ms: list[float] = field(default_factory=list)  # every invocation, warm-up too
    started_ms: list[int] = field(default_factory=list)  # every invocation's start (epoch)
    sent: list[int] = field(default_factory=list)  # invocation numbers whose records count
    errors: list[str] = field(default_factory=list)
    shutdown_ms: float = 0.0
    relay_summary: dict[str, Any] | None = None
    delivery: Delivery | None = None


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    title: str
    rtt_ms: float
    caller_ms: Summary
    billed_ms: Summary
    pace_ms: float  # median time between the starts of two invocations of this scenario
    records: int
    records_per_s: float  # records ÷ (Σ billed-equivalent time + SHUTDOWN)
    lost: int
    duplicates: int
    errors: list[str]
    shutdown_ms: float
    relay_summary: dict[str, Any] | None

    @classmethod
    def of(cls, run: ScenarioRun, workload: Workload) -> ScenarioResult:
        assert run.delivery is not None, "read the topic back before summarising"
        if not run.caller_ms:
            raise BenchError(f"{run.scenario.title} at {run.rtt_ms:g} ms RTT: no measured "
                             f"invocation succeeded; first errors: {run.errors[:3]}")
        records = len(run.sent) * workload.count if run.scenario.sends else 0
        busy_s = (sum(run.duration_ms) + run.shutdown_ms) / 1000
        return cls(
            name=run.scenario.name,
            title=run.scenario.title,
            rtt_ms=run.rtt_ms,
            caller_ms=Summary.of(run.caller_ms),
            billed_ms=Summary.of(run.billed_ms),
            pace_ms=statistics.median(b - a for a, b in itertools.pairwise(run.started_ms))
            if len(run.started_ms) > 1 else 0.0,
            records=records,
            records_per_s=records / busy_s if busy_s > 0 else 0.0,
            lost=run.delivery.lost,
            duplicates=run.delivery.duplicates,
            errors=run.errors,
            shutdown_ms=run.shutdown_ms,
            relay_summary=run.relay_summary,
        )


def _check(scenario: Scenario, result: InvokeResult, workload: Workload) -> str | None:
    """What went wrong with one invocation, None when its records are all handed over."""
    if result.status != "success":
        return f"{result.status}: {result.error}"
    reply = result.payload if isinstance(result.payload, dict) else {}
    want = workload.count
    if not scenario.sends:
        ok = True
    elif scenario.relay:
        ok = reply.get("accepted") == want and reply.get("delivered", want) == want
    else:
        ok = reply.get("delivered") == want and not reply.get("failed")
    return None if ok else f"incomplete: {reply}"


def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    net: Network,
    layers: Layers,
    rtt_ms: float,
    workload: Workload,
    workdir: Path,
    progress: Callable[[str], None],
) -> list[ScenarioResult]:
    net.set_rtt(rtt_ms)
    runs: list[tuple[ScenarioRun, Sandbox]] = []
    with ExitStack() as stack:
        for scenario in scenarios:
            label = f"{scenario.name}-{rtt_ms:g}ms"
            run = ScenarioRun(scenario, rtt_ms, net.create_topic(label), uuid.uuid4().hex[:8])
            sb = stack.enter_context(sandbox(
                net=net, layer=layers.relay if scenario.relay else layers.client_only,
                handler=scenario.handler, topic=run.topic, workdir=workdir, name=label,
                env=dict(scenario.env)))
            sb.start()
            runs.append((run, sb))
        together = [r for r in runs if not r[0].scenario.solo]
        for group in ([together] if together else []) + [[r] for r in runs if r[0].scenario.solo]:
            _rounds(group, workload=workload, progress=progress)
        for run, sb in runs:
            shutdown = sb.shutdown("spindown")
            run.shutdown_ms = shutdown.duration_ms
            if shutdown.killed:
                run.errors.append(f"SIGKILLed at SHUTDOWN: {shutdown.killed}")
            if run.scenario.relay:
                summaries = events_named(sb.log_lines(), "shutdown.summary")
                run.relay_summary = summaries[-1] if summaries else None
                if run.relay_summary is None:
                    run.errors.append("no shutdown.summary from the extension")
    net.set_rtt(0)  # reading back is not what is measured
    for run, _ in runs:
        if not run.scenario.sends:
            run.delivery = Delivery(expected=0, found=0, lost=0, duplicates=0)
            continue
        keys = [f"{run.run_id}-{n}-{i}" for n in run.sent for i in range(workload.count)]
        run.delivery = net.delivery(run.topic, keys, timeout=30 + len(keys) / 5000)
    return [ScenarioResult.of(run, workload) for run, _ in runs]


def _rounds(
    runs: list[tuple[ScenarioRun, Sandbox]], *, workload: Workload,
    progress: Callable[[str], None],
) -> None:
    """Invoke every scenario once per round, rotating who goes first."""
    rounds = workload.warmup + workload.invocations
    names = ", ".join(run.scenario.name for run, _ in runs)
    started = time.monotonic()
    for n in range(rounds):
        shift = n % len(runs)
        for run, sb in runs[shift:] + runs[:shift]:
            _invoke(run, sb, n, measured=n >= workload.warmup, workload=workload)
        if (n + 1) % 50 == 0 or n + 1 == rounds:
            progress(f"  {runs[0][0].rtt_ms:g} ms RTT, {names}: {n + 1}/{rounds} rounds "
                     f"({time.monotonic() - started:.0f} s)")


def _invoke(run: ScenarioRun, sb: Sandbox, n: int, *, measured: bool, workload: Workload) -> None:
    event = {"run": run.run_id, "n": n, "count": workload.count, "size": workload.size,
             **dict(run.scenario.event)}
    result = sb.invoke(event)
    run.duration_ms.append(result.duration_ms)
    run.started_ms.append(result.started_ms)
    problem = _check(run.scenario, result, workload)
    if problem is not None:
        run.errors.append(f"invocation {n}: {problem}"[:500])
        if result.reset is not None:
            raise BenchError(f"{run.scenario.title} at {run.rtt_ms:g} ms RTT: the environment "
                             f"was reset by invocation {n} ({problem}); see {sb.log_path}")
    # Records of a failed invocation may or may not have arrived: only the complete ones
    # are expected on the topic.
    if problem is None:
        run.sent.append(n)
    if measured and problem is None:
        run.caller_ms.append(result.caller_ms)
        run.billed_ms.append(result.billed_ms)
