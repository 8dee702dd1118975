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

from bench.extension import run_drain, run_handoff, run_init
from bench.infra import REPO_ROOT, BenchError, layer_sizes, network, prepare_layers
from bench.invocations import SCENARIO_NAMES, SCENARIOS, Workload, run_scenarios
from bench.report import BenchResults, checks, render, to_json
from devtools.kafka_broker import BrokerError
from devtools.sandbox import SandboxError
from layer_build.errors import LayerBuildError

EXTRAS = ("handoff", "init", "drain", "size")
DRAIN_RECORDS = 10_000
HANDOFF_BATCHES = 100  # x 500 records per invocation


@dataclass(frozen=True)
class Counts:
    invocations: int
    warmup: int
    init_samples: int
    drain_samples: int
    handoff_invocations: int


DEFAULT = Counts(invocations=200, warmup=3, init_samples=7, drain_samples=3,
                 handoff_invocations=4)
QUICK = Counts(invocations=30, warmup=2, init_samples=3, drain_samples=1,
               handoff_invocations=2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="kafka-relay against producing in the handler, in the local Lambda sandbox.")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK.invocations} invocations per scenario and "
                        "fewer samples of everything else")
    parser.add_argument("--invocations", type=int, metavar="N",
                        help=f"measured invocations per scenario and RTT (default "
                        f"{DEFAULT.invocations}, --quick {QUICK.invocations})")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[*SCENARIO_NAMES, *EXTRAS],
                        help=f"run only these: {', '.join((*SCENARIO_NAMES, *EXTRAS))}")
    parser.add_argument("--rtt", nargs="+", type=float, default=[20.0, 0.0], metavar="MS",
                        help="round-trip latencies the proxy adds (default: 20 0)")
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
    wanted = set(args.only or (*SCENARIO_NAMES, *EXTRAS))
    workload = Workload(invocations=args.invocations or base.invocations, warmup=base.warmup)
    results = BenchResults(options={
        "quick": args.quick, "invocations": workload.invocations, "warmup": workload.warmup,
        "records": workload.count, "record_bytes": workload.size, "rtt_ms": args.rtt,
        "only": sorted(wanted), "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(),
    })
    if "size" in wanted:
        results.layer_sizes = layer_sizes(args.dist)
    if not wanted - {"size"}:
        return results
    layers = prepare_layers(args.dist / "kafka-relay-layer-x86_64.zip", workdir)
    scenarios = [s for s in SCENARIOS if s.name in wanted]
    target_rtt = max(args.rtt)
    with network() as net:
        for rtt in args.rtt:
            if scenarios:
                _say(f"invocations at {rtt:g} ms RTT: {', '.join(s.name for s in scenarios)}")
                results.invocations += run_scenarios(
                    scenarios, net=net, layers=layers, rtt_ms=rtt, workload=workload,
                    workdir=workdir, progress=_say)
        if "handoff" in wanted:
            for rtt in sorted(args.rtt):
                _say(f"handoff throughput at {rtt:g} ms RTT")
                results.handoff.append(run_handoff(
                    net=net, layers=layers, rtt_ms=rtt, invocations=base.handoff_invocations,
                    batches=HANDOFF_BATCHES, workdir=workdir, progress=_say))
        if "init" in wanted:
            for rtt in args.rtt:
                _say(f"extension init at {rtt:g} ms RTT")
                results.init.append(run_init(net=net, layers=layers, rtt_ms=rtt,
                                             samples=base.init_samples, workdir=workdir))
        if "drain" in wanted:
            _say(f"SHUTDOWN drain of {DRAIN_RECORDS:,} records at {target_rtt:g} ms RTT")
            results.drain = run_drain(net=net, layers=layers, rtt_ms=target_rtt,
                                      records=DRAIN_RECORDS, samples=base.drain_samples,
                                      workdir=workdir)
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
