"""The per-invocation cases — two in-handler baselines and the kafka-relay modes — over a grid
of memory sizes (the CPU quota follows) and round-trip times.

Per memory size every case gets one environment (sandbox) and topic, started first;
then, for each round-trip time the proxy adds, all of them are invoked in rounds
with the order rotating each round, so the machine's noise falls on all alike. A
``solo`` case runs its rounds right after the others: the per-invocation producer's
~0.6 s invocations would otherwise set everyone's pace, and the pace decides how
often ``periodic`` flushes. A relay flush mode the extension refuses at init is
reported as skipped (the bench runs before and after that mode exists). After
the rounds each environment is shut down (the relay drains) and its topic is read
back by key: every record of every complete invocation must be there.
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

from bench.infra import (
    BenchError,
    Delivery,
    Layers,
    Network,
    sandbox,
    start_or_unsupported,
)
from bench.stats import Summary
from devtools.sandbox import InvokeResult, Sandbox
from kafka_relay.tools.table import events_named

FLUSH = "KAFKA_RELAY_FLUSH"


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    handler: str
    relay: bool  # attach the real layer (extension included), else its python/ only
    env: tuple[tuple[str, str], ...] = ()
    event: tuple[tuple[str, Any], ...] = ()
    sends: bool = True  # produces the workload (else a reference point)
    solo: bool = False  # invoked in its own rounds, after the interleaved ones
    memories: tuple[int, ...] | None = None  # only at these memory sizes (None: all)


CASES: tuple[Case, ...] = (
    Case("floor", "empty handler (reference)", "empty", relay=False, sends=False),
    # What the extension costs an invocation that hands nothing over (end signal, INVOKE,
    # telemetry): the fixed part of the relay's CPU and billed time.
    Case("relay-idle", "kafka-relay end, 0 records (reference)", "relay_send", relay=True,
         env=((FLUSH, "end"),), event=(("count", 0),), sends=False),
    Case("per-invocation", "producer per invocation (seed)", "seed_per_invocation",
         relay=False, solo=True, memories=(1769,)),
    Case("reused", "reused in-handler producer", "global_producer", relay=False),
    Case("end", "kafka-relay end", "relay_send", relay=True, env=((FLUSH, "end"),)),
    Case("periodic", "kafka-relay periodic:1000", "relay_send", relay=True,
         env=((FLUSH, "periodic:1000"),)),
    Case("wait", "kafka-relay send(wait=True)", "relay_send", relay=True,
         env=((FLUSH, "end"),), event=(("wait", True),)),
    Case("auto", "kafka-relay auto", "relay_send", relay=True, env=((FLUSH, "auto"),)),
)
CASE_NAMES = tuple(c.name for c in CASES)


@dataclass(frozen=True)
class Workload:
    invocations: int  # measured per case, memory size and RTT
    warmup: int  # per case, before the measured ones (first-invoke costs stay out)
    solo_invocations: int  # measured per RTT for a solo case (the slow per-invocation one)
    count: int = 100  # records per invocation
    size: int = 1024  # bytes per record


@dataclass
class ScenarioRun:
    """One case at one memory size and round-trip time: samples as they come."""

    case: Case
    memory_mb: int
    rtt_ms: float
    topic: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    caller_ms: list[float] = field(default_factory=list)
    billed_ms: list[float] = field(default_factory=list)
    cpu_runtime_ms: list[float] = field(default_factory=list)
    cpu_extensions_ms: list[float] = field(default_factory=list)
    quota_vcpus: float | None = None
    duration_ms: list[float] = field(default_factory=list)  # every invocation, warm-up too
    started_ms: list[int] = field(default_factory=list)  # every invocation's start (epoch)
    sent: list[int] = field(default_factory=list)  # invocation numbers whose records count
    errors: list[str] = field(default_factory=list)
    delivery: Delivery | None = None

    def expected_keys(self, count: int) -> list[str]:
        return [f"{self.run_id}-{n}-{i}" for n in self.sent for i in range(count)]


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    title: str
    memory_mb: int
    rtt_ms: float
    quota_vcpus: float | None
    caller_ms: Summary
    billed_ms: Summary
    cpu_ms: Summary  # per invocation, runtime + extensions
    cpu_runtime_us_per_record: float  # means over the measured invocations
    cpu_extensions_us_per_record: float
    pace_ms: float  # median time between the starts of two invocations of this case
    records: int
    lost: int
    duplicates: int
    errors: list[str]

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_runtime_us_per_record + self.cpu_extensions_us_per_record

    @classmethod
    def of(cls, run: ScenarioRun, workload: Workload) -> ScenarioResult:
        assert run.delivery is not None, "read the topic back before summarising"
        where = f"{run.case.title} at {run.memory_mb} MB, {run.rtt_ms:g} ms RTT"
        if not run.caller_ms:
            raise BenchError(f"{where}: no measured invocation succeeded; first errors: "
                             f"{run.errors[:3]}")
        per = workload.count if run.case.sends else 1  # the floor: CPU per invocation

        def per_record_us(samples: list[float]) -> float:
            return statistics.fmean(samples) * 1000 / per

        return cls(
            name=run.case.name, title=run.case.title, memory_mb=run.memory_mb,
            rtt_ms=run.rtt_ms, quota_vcpus=run.quota_vcpus,
            caller_ms=Summary.of(run.caller_ms), billed_ms=Summary.of(run.billed_ms),
            cpu_ms=Summary.of([a + b for a, b in zip(run.cpu_runtime_ms,
                                                     run.cpu_extensions_ms, strict=True)]),
            cpu_runtime_us_per_record=per_record_us(run.cpu_runtime_ms),
            cpu_extensions_us_per_record=per_record_us(run.cpu_extensions_ms),
            pace_ms=statistics.median(b - a for a, b in itertools.pairwise(run.started_ms))
            if len(run.started_ms) > 1 else 0.0,
            records=len(run.sent) * workload.count if run.case.sends else 0,
            lost=run.delivery.lost, duplicates=run.delivery.duplicates, errors=run.errors,
        )


@dataclass(frozen=True)
class Skipped:
    name: str
    title: str
    memory_mb: int
    reason: str


@dataclass
class GridResult:
    results: list[ScenarioResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unaccounted: int = 0  # the extensions' own shutdown.summary count, all environments


@dataclass
class _Env:
    case: Case
    sb: Sandbox
    topic: str
    runs: list[ScenarioRun] = field(default_factory=list)


def run_grid(
    cases: Sequence[Case],
    *,
    net: Network,
    layers: Layers,
    memories: Sequence[int],
    rtts: Sequence[float],
    workload: Workload,
    workdir: Path,
    progress: Callable[[str], None],
) -> GridResult:
    grid = GridResult()
    done: list[_Env] = []
    for memory in memories:
        with ExitStack() as stack:
            envs = _start(cases, memory, net=net, layers=layers, workdir=workdir, stack=stack,
                          grid=grid, progress=progress)
            for rtt in rtts:
                net.set_rtt(rtt)
                for env in envs:
                    env.runs.append(ScenarioRun(env.case, memory, rtt, env.topic))
                together = [e for e in envs if not e.case.solo]
                groups = ([together] if together else []) + [[e] for e in envs if e.case.solo]
                for group in groups:
                    _rounds(group, workload=workload, progress=progress)
            for env in envs:
                grid.unaccounted += _shut_down(env)
            done += envs
    net.set_rtt(0)  # reading back is not what is measured
    for env in done:
        expected = sum(len(r.sent) for r in env.runs) * workload.count
        keys = net.keys(env.topic, timeout=30 + expected / 5000) if env.case.sends else []
        for run in env.runs:
            run.delivery = Delivery.of(run.expected_keys(workload.count) if run.case.sends
                                       else [], keys)
            grid.results.append(ScenarioResult.of(run, workload))
    return grid


def _start(
    cases: Sequence[Case], memory: int, *, net: Network, layers: Layers, workdir: Path,
    stack: ExitStack, grid: GridResult, progress: Callable[[str], None],
) -> list[_Env]:
    envs = []
    for case in cases:
        if case.memories is not None and memory not in case.memories:
            continue
        label = f"{case.name}-{memory}mb"
        topic = net.create_topic(label)
        sb = stack.enter_context(sandbox(
            net=net, layer=layers.relay if case.relay else layers.client_only,
            handler=case.handler, topic=topic, workdir=workdir, name=label,
            env=dict(case.env), memory_mb=memory))
        refused = start_or_unsupported(sb, setting=FLUSH) if case.relay else None
        if refused is None and not case.relay:
            sb.start()
        if refused is not None:
            progress(f"  {case.title} at {memory} MB: {refused}")
            grid.skipped.append(Skipped(case.name, case.title, memory, refused))
            continue
        envs.append(_Env(case, sb, topic))
    return envs


def _shut_down(env: _Env) -> int:
    """Spin the environment down (the relay drains); the records its extension could not
    account for."""
    shutdown = env.sb.shutdown("spindown")
    last = env.runs[-1]
    if shutdown.killed:
        last.errors.append(f"SIGKILLed at SHUTDOWN: {shutdown.killed}")
    if not env.case.relay:
        return 0
    summaries = events_named(env.sb.log_lines(), "shutdown.summary")
    if not summaries:
        last.errors.append("no shutdown.summary from the extension")
        return 0
    return int(summaries[-1].get("unaccounted", 0))


def _rounds(envs: list[_Env], *, workload: Workload, progress: Callable[[str], None]) -> None:
    """Invoke every environment once per round, rotating who goes first."""
    measured = workload.solo_invocations if envs[0].case.solo else workload.invocations
    rounds = workload.warmup + measured
    run = envs[0].runs[-1]
    names = ", ".join(e.case.name for e in envs)
    started = time.monotonic()
    for n in range(rounds):
        shift = n % len(envs)
        for env in envs[shift:] + envs[:shift]:
            _invoke(env, n, measured=n >= workload.warmup, workload=workload)
        if (n + 1) % 100 == 0 or n + 1 == rounds:
            progress(f"  {run.memory_mb} MB, {run.rtt_ms:g} ms RTT, {names}: {n + 1}/{rounds} "
                     f"rounds ({time.monotonic() - started:.0f} s)")


def _check(case: Case, result: InvokeResult, workload: Workload) -> str | None:
    """What went wrong with one invocation, None when its records are all handed over."""
    if result.status != "success":
        return f"{result.status}: {result.error}"
    reply = result.payload if isinstance(result.payload, dict) else {}
    want = workload.count
    if not case.sends:
        ok = True
    elif case.relay:
        ok = reply.get("accepted") == want and reply.get("delivered", want) == want
    else:
        ok = reply.get("delivered") == want and not reply.get("failed")
    return None if ok else f"incomplete: {reply}"


def _invoke(env: _Env, n: int, *, measured: bool, workload: Workload) -> None:
    run = env.runs[-1]
    event = {"run": run.run_id, "n": n, "count": workload.count, "size": workload.size,
             **dict(env.case.event)}
    result = env.sb.invoke(event)
    run.duration_ms.append(result.duration_ms)
    run.started_ms.append(result.started_ms)
    run.quota_vcpus = result.cpu_quota_vcpus
    problem = _check(env.case, result, workload)
    if problem is not None:
        run.errors.append(f"invocation {n}: {problem}"[:500])
        if result.reset is not None:
            raise BenchError(f"{env.case.title} at {run.memory_mb} MB, {run.rtt_ms:g} ms RTT: "
                             f"the environment was reset by invocation {n} ({problem}); see "
                             f"{env.sb.log_path}")
        return  # its records may or may not have arrived: only complete ones are expected
    run.sent.append(n)
    if measured:
        run.caller_ms.append(result.caller_ms)
        run.billed_ms.append(result.billed_ms)
        run.cpu_runtime_ms.append(result.cpu_runtime_ms)
        run.cpu_extensions_ms.append(result.cpu_extensions_ms)
