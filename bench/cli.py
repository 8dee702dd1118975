"""``python -m bench``: run the measurements, print the table, write bench/results/<UTC>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from bench.coldstart import run_init
from bench.extension import run_drain, run_handoff
from bench.infra import (
    REPO_ROOT,
    BenchError,
    delay_source,
    layer_sizes,
    network,
    prepare_layers,
    probe_netem,
)
from bench.invocations import CASE_NAMES, CASES, Workload, run_grid
from bench.model import BenchResults
from bench.outage import run_outage
from bench.report import render, to_json
from bench.targets import HANDOFF_MEMORY_MB, checks
from devtools.kafka_broker import BrokerError
from devtools.sandbox import SandboxError
from layer_build.errors import LayerBuildError

EXTRAS = ("handoff", "init", "drain", "outage", "size")
# What a 256 MB function may hold pending in memory by default (delivery/budget.py, with the
# outage spool on: 2,653 records, 1.99 MB): the drain fills most of it with 1 KB records.
DRAIN_RECORDS = 1_800
HANDOFF_BATCHES = 100  # x 500 records per invocation
MEMORIES = (256, 1769)  # MB: the producers' deployed size (0.145 vCPU) and one full vCPU
RTTS = (0.0, 1.0, 5.0, 20.0)  # ms: same host, same VPC, MSK acks=all across zones, remote
OUTAGE_MEMORY_MB = 1769
OUTAGE_RTT_MS = 1.0


@dataclass(frozen=True)
class Counts:
    invocations: int
    solo_invocations: int
    warmup: int
    init_samples: int
    drain_samples: int
    handoff_invocations: int
    outage_s: float


DEFAULT = Counts(invocations=200, solo_invocations=20, warmup=3, init_samples=5,
                 drain_samples=2, handoff_invocations=3, outage_s=60.0)
QUICK = Counts(invocations=25, solo_invocations=5, warmup=2, init_samples=2, drain_samples=1,
               handoff_invocations=2, outage_s=12.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="kafka-relay against producing in the handler, in the local Lambda "
        "sandbox under Lambda's CPU quota.")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK.invocations} invocations per case, a "
                        f"{QUICK.outage_s:g} s outage, fewer samples of everything else")
    parser.add_argument("--invocations", type=int, metavar="N",
                        help=f"measured invocations per case, memory size and RTT (default "
                        f"{DEFAULT.invocations}, --quick {QUICK.invocations})")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[*CASE_NAMES, *EXTRAS],
                        help=f"run only these: {', '.join((*CASE_NAMES, *EXTRAS))}")
    parser.add_argument("--rtt", nargs="+", type=float, default=list(RTTS), metavar="MS",
                        help="round-trip latencies the proxy adds (default: 0 1 5 20)")
    parser.add_argument("--memory", nargs="+", type=int, default=list(MEMORIES), metavar="MB",
                        help="function memory sizes; the CPU quota follows (default: 256 1769)")
    parser.add_argument("--outage", type=float, metavar="S",
                        help=f"seconds the broker is away in the outage scenario (default "
                        f"{DEFAULT.outage_s:g}, --quick {QUICK.outage_s:g})")
    parser.add_argument("--dist", type=Path, default=REPO_ROOT / "dist",
                        help="where the built layer and manifest.json are (default: dist)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results",
                        help="where to write the JSON (default: bench/results)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the sandboxes' log streams (kept anyway when a run fails)")
    args = parser.parse_args(argv)
    if args.invocations is not None and args.invocations < 1:
        parser.error("--invocations must be at least 1")
    return args


def _say(line: str, stream: TextIO = sys.stderr) -> None:
    print(line, file=stream, flush=True)


def run(args: argparse.Namespace, workdir: Path) -> BenchResults:
    base = QUICK if args.quick else DEFAULT
    wanted = set(args.only or (*CASE_NAMES, *EXTRAS))
    workload = Workload(invocations=args.invocations or base.invocations, warmup=base.warmup,
                        solo_invocations=min(args.invocations or base.solo_invocations,
                                             base.solo_invocations))
    outage_s = args.outage or base.outage_s
    results = BenchResults(options={
        "quick": args.quick, "invocations": workload.invocations,
        "solo_invocations": workload.solo_invocations, "warmup": workload.warmup,
        "records": workload.count, "record_bytes": workload.size, "rtt_ms": args.rtt,
        "memory_mb": args.memory, "outage_s": outage_s, "only": sorted(wanted),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(),
    })
    if "size" in wanted:
        results.layer_sizes = layer_sizes(args.dist)
    if not wanted - {"size"}:
        return results
    layers = prepare_layers(args.dist / "kafka-relay-layer-x86_64.zip", workdir)
    cases = [c for c in CASES if c.name in wanted]
    delay = delay_source(probe_netem())
    results.options["rtt_delay"] = delay
    _say(f"round-trip delay to the broker: {delay}")
    with network() as net:
        if cases:
            _say(f"invocations at {args.memory} MB x {args.rtt} ms RTT: "
                 f"{', '.join(c.name for c in cases)}")
            grid = run_grid(cases, net=net, layers=layers, memories=args.memory, rtts=args.rtt,
                            workload=workload, workdir=workdir, progress=_say)
            results.invocations, results.skipped = grid.results, grid.skipped
            results.unaccounted = grid.unaccounted
        if "handoff" in wanted:
            _say(f"handoff throughput at {HANDOFF_MEMORY_MB} MB, 0 ms RTT")
            results.handoff.append(run_handoff(
                net=net, layers=layers, memory_mb=HANDOFF_MEMORY_MB, rtt_ms=0.0,
                invocations=base.handoff_invocations, batches=HANDOFF_BATCHES, workdir=workdir,
                progress=_say))
        if "init" in wanted:
            rtt = max(args.rtt)
            for memory_mb in args.memory:
                _say(f"cold start side by side at {memory_mb} MB, {rtt:g} ms RTT")
                results.init.append(run_init(
                    net=net, layers=layers, memory_mb=memory_mb, rtt_ms=rtt,
                    samples=base.init_samples, records=workload.count,
                    record_bytes=workload.size, workdir=workdir))
        if "drain" in wanted:
            rtt = max(args.rtt)
            _say(f"SHUTDOWN drain of {DRAIN_RECORDS:,} records at 256 MB, {rtt:g} ms RTT")
            results.drain = run_drain(net=net, layers=layers, memory_mb=256, rtt_ms=rtt,
                                      records=DRAIN_RECORDS, samples=base.drain_samples,
                                      workdir=workdir)
        if "outage" in wanted:
            _say(f"broker down {outage_s:g} s at {OUTAGE_MEMORY_MB} MB, {OUTAGE_RTT_MS:g} ms RTT")
            results.outage = run_outage(net=net, layers=layers, memory_mb=OUTAGE_MEMORY_MB,
                                        rtt_ms=OUTAGE_RTT_MS, outage_s=outage_s,
                                        records=workload.count, workdir=workdir, progress=_say)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="kafka-relay-bench-"))
    try:
        results = run(args, workdir)
    except (BenchError, BrokerError, SandboxError, LayerBuildError) as exc:
        _say(f"error: {exc}\n(sandbox logs kept in {workdir})")
        return 1
    except BaseException:
        _say(f"(sandbox logs kept in {workdir})")
        raise
    results.options["duration_s"] = round(time.monotonic() - started, 1)
    results.options["utc"] = stamp
    found = checks(results)
    _say(render(results, found), sys.stdout)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{stamp}.json"
    path.write_text(json.dumps(to_json(results, found), indent=2) + "\n")
    _say(f"\nwrote {path} ({results.options['duration_s']:g} s)")
    if args.keep_logs:
        _say(f"sandbox logs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
