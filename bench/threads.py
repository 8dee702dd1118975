"""Where the extension's fixed cost per invocation goes, thread by thread.

    .venv/bin/python -m bench.threads [--layer ZIP [ZIP ...]] [--invocations 200] [--runs 3]
        [--memory 256] [--gap-ms 50] [--rtt 1] [--warmup 20]

Starts one sandbox per layer (default: the built dist/kafka-relay-layer-x86_64.zip) with the
bench's ``relay-idle`` case (the decorated handler, ``end``, 0 records: INVOKE, the client's
end call, Telemetry) under the CPU quota of ``--memory``, behind the local broker and the
bench's latency proxy. Each run invokes every environment ``--invocations`` times, in rounds
whose order rotates, frozen ``--gap-ms`` after each round as between two requests in
Lambda; then prints, per thread of each extension process, CPU ms and voluntary context
switches per invocation. Several layers (an earlier tree's build beside this one) are
measured as interleaved pairs in one run: read them as ratios, run for run.

CPU comes from each task's ``/proc/<pid>/task/<tid>/schedstat`` (ns on the CPU), context
switches from its ``status``, both read before and after the run; "all" is the process's own
count (``/proc/<pid>/stat``, clock ticks), which keeps threads that exited meanwhile. Threads
are named by Python's names from ``py-spy dump --json --nonblocking`` (Python does not name
its threads for the kernel); without py-spy (beside this interpreter or on PATH), by the
kernel's name and start order (``#1`` is the main thread; librdkafka names its own ``rdk:``).
Numbers go in docs/cost.md ("Fixed cost per invocation"); a developer's tool, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.infra import BenchError, Network, extension_pid, network, sandbox
from bench.invocations import CASES
from devtools.procfs import STIME, UTIME, read_stat
from devtools.sandbox import Sandbox

CASE = next(c for c in CASES if c.name == "relay-idle")
DEFAULT_LAYER = Path(__file__).resolve().parent.parent / "dist" / "kafka-relay-layer-x86_64.zip"


@dataclass(frozen=True)
class Task:
    """One thread's counters at one moment."""

    tid: int
    kernel_name: str
    cpu_ns: int
    voluntary: int


@dataclass(frozen=True)
class Row:
    name: str
    cpu_ms: float  # per invocation
    voluntary: float  # per invocation


def parse_schedstat(text: str) -> int:
    """Nanoseconds on the CPU: the first of schedstat's three fields."""
    return int(text.split(maxsplit=1)[0])


def parse_status(text: str) -> tuple[str, int]:
    """The task's kernel name and its voluntary context switches from its ``status``."""
    fields = dict(line.partition(":")[::2] for line in text.splitlines())
    return fields["Name"].strip(), int(fields["voluntary_ctxt_switches"])


def parse_py_spy(text: str) -> dict[int, str]:
    """Kernel tid -> Python thread name from ``py-spy dump --json``."""
    names: dict[int, str] = {}
    for thread in json.loads(text):
        tid, name = thread.get("os_thread_id"), thread.get("thread_name")
        if isinstance(tid, int) and isinstance(name, str):
            names[tid] = name
    return names


def read_tasks(pid: int) -> dict[int, Task]:
    """Every live thread of ``pid``; one that exits while being read is left out."""
    tasks: dict[int, Task] = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns = parse_schedstat((entry / "schedstat").read_text())
            kernel_name, voluntary = parse_status((entry / "status").read_text())
        except (OSError, ValueError):
            continue
        tasks[int(entry.name)] = Task(int(entry.name), kernel_name, cpu_ns, voluntary)
    return tasks


def process_cpu_ms(pid: int) -> float:
    """The process's CPU (utime + stime, exited threads included), in ms."""
    fields = read_stat(pid)
    if fields is None:
        raise BenchError(f"the extension process {pid} is gone")
    return (int(fields[UTIME]) + int(fields[STIME])) * 1000 / os.sysconf("SC_CLK_TCK")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def python_names(pid: int, tool: str | None) -> dict[int, str]:
    """Python's thread names of ``pid`` (frozen or not: ``--nonblocking`` only reads its
    memory); empty without py-spy or when it fails."""
    if tool is None:
        return {}
    done = subprocess.run([tool, "dump", "--json", "--nonblocking", "--pid", str(pid)],
                          capture_output=True, text=True, timeout=30, check=False)
    return parse_py_spy(done.stdout) if done.returncode == 0 else {}


def rows(before: Mapping[int, Task], after: Mapping[int, Task], names: Mapping[int, str],
         invocations: int) -> list[Row]:
    """Per thread alive at the end, in start order (tid), what it spent per invocation; a
    thread started during the run counts from zero. Same names are numbered apart."""
    out: list[Row] = []
    seen: dict[str, int] = {}
    for order, tid in enumerate(sorted(after), start=1):
        now, then = after[tid], before.get(tid)
        name = names.get(tid) or f"#{order} {now.kernel_name}"
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name} ({seen[name]})"
        out.append(Row(label, (now.cpu_ns - (then.cpu_ns if then else 0)) / 1e6 / invocations,
                       (now.voluntary - (then.voluntary if then else 0)) / invocations))
    return out


@dataclass
class _Env:
    layer: Path
    sb: Sandbox
    pid: int = 0


def _invoke(env: _Env) -> None:
    result = env.sb.invoke({"run": "threads", "n": 0, "size": 1024, **dict(CASE.event)})
    if result.status != "success":
        raise BenchError(f"{env.layer}: invocation failed ({result.status}: {result.error}); "
                         f"see {env.sb.log_path}")


def _rounds(envs: Sequence[_Env], count: int, gap_s: float) -> None:
    for n in range(count):
        shift = n % len(envs)
        for env in [*envs[shift:], *envs[:shift]]:
            _invoke(env)
        time.sleep(gap_s)


def _table(title: str, measured: Sequence[tuple[list[Row], float]], headers: Sequence[str],
           invocations: int) -> str:
    """One column per environment: ``cpu ms (voluntary switches)`` per invocation."""
    order = list(dict.fromkeys(r.name for got, _ in measured for r in got))
    lines = [title, "", f"| thread, ms per invocation (voluntary switches) | "
             f"{' | '.join(headers)} |", "|---" * (len(headers) + 1) + "|"]
    for name in order:
        cells = []
        for got, _ in measured:
            row = next((r for r in got if r.name == name), None)
            cells.append("-" if row is None else f"{row.cpu_ms:.3f} ({row.voluntary:.1f})")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(f"| threads above | "
                 f"{' | '.join(f'{sum(r.cpu_ms for r in got):.3f}' for got, _ in measured)} |")
    lines.append(f"| all (the process, {invocations} invocations) | "
                 f"{' | '.join(f'{total / invocations:.3f}' for _, total in measured)} |")
    return "\n".join(lines)


def measure(net: Network, args: argparse.Namespace, workdir: Path) -> None:
    net.set_rtt(args.rtt)
    tool = py_spy()
    if tool is None:
        print("py-spy not found: threads named by start order", file=sys.stderr)
    with ExitStack() as stack:
        envs = []
        for i, layer in enumerate(args.layer):
            topic = net.create_topic(f"threads-{i}")
            sb = stack.enter_context(sandbox(
                net=net, layer=layer, handler=CASE.handler, topic=topic, workdir=workdir,
                name=f"threads-{i}-{args.memory}mb", env=dict(CASE.env), memory_mb=args.memory))
            sb.start()
            envs.append(_Env(layer, sb))
        for env in envs:
            env.pid = extension_pid(env.sb)
        _rounds(envs, args.warmup, args.gap_ms / 1000)
        headers = [f"{i}: {env.layer.parent.parent.name or env.layer}"
                   for i, env in enumerate(envs)]
        for run in range(1, args.runs + 1):
            before = [(read_tasks(e.pid), process_cpu_ms(e.pid)) for e in envs]
            _rounds(envs, args.invocations, args.gap_ms / 1000)
            after = [(read_tasks(e.pid), process_cpu_ms(e.pid)) for e in envs]
            measured = [(rows(b[0], a[0], python_names(e.pid, tool), args.invocations),
                         a[1] - b[1]) for e, b, a in zip(envs, before, after, strict=True)]
            print(_table(f"run {run}/{args.runs}: {args.memory} MB, {args.rtt:g} ms RTT, "
                         f"{args.gap_ms:g} ms frozen after each round", measured, headers,
                         args.invocations), flush=True)
            print(flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.threads",
                                     description=__doc__.split("\n\n")[2] if __doc__ else None)
    parser.add_argument("--layer", nargs="+", type=Path, default=[DEFAULT_LAYER],
                        metavar="ZIP", help="built layer zips, one environment each "
                        "(default: dist/kafka-relay-layer-x86_64.zip)")
    parser.add_argument("--invocations", type=int, default=200, metavar="N",
                        help="per environment and run (default 200)")
    parser.add_argument("--runs", type=int, default=3, help="default 3")
    parser.add_argument("--warmup", type=int, default=20, metavar="N",
                        help="invocations before the first run (default 20)")
    parser.add_argument("--memory", type=int, default=256, metavar="MB",
                        help="function memory; the CPU quota follows (default 256)")
    parser.add_argument("--gap-ms", type=float, default=50.0, metavar="MS",
                        help="frozen after each round (default 50)")
    parser.add_argument("--rtt", type=float, default=1.0, metavar="MS",
                        help="round trip the proxy adds to the broker (default 1)")
    args = parser.parse_args(argv)
    for layer in args.layer:
        if not layer.is_file():
            parser.error(f"{layer} is missing: python -m layer_build.build --arch x86_64 "
                         "--for-sandbox builds it")
    if min(args.invocations, args.runs) < 1 or args.warmup < 0:
        parser.error("--invocations and --runs must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kafka-relay-threads-") as tmp, network() as net:
        try:
            measure(net, args, Path(tmp))
        except BenchError as exc:
            print(f"bench.threads: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
