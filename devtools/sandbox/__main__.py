"""Invoke a function with its layers in the local Lambda sandbox.

    python -m devtools.sandbox --layer dist/kafka-relay-layer-x86_64.zip \\
        --function dist/producer-functions.zip --handler rss_producer.handler \\
        --event '{}' --invocations 3 --env KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
        [--timeout 30] [--log out.log] [--mode managed-instances --max-concurrency 4]

With ``--mode managed-instances`` the invocations run concurrently (up to
``--max-concurrency``); with ``--mode snap-start`` the first one restores the
environment from its snapshot.

    ./build.sh sandbox --function my_function.zip --handler app.handler \\
        --event @event.json --with-broker --topic orders

Prints one JSON line per invocation, then the log stream, then a summary
(invocations ok/failed; records accepted, delivered, dead-lettered, spilled; errors).
Exits 1 when init or any invocation failed, when records were spilled (unless
``--allow-spill``) or when kafka-relay never reached the broker. ``--with-broker``
starts a local Kafka broker (Tansu) for the run, points KAFKA_BOOTSTRAP_SERVERS at
it, creates ``--topic`` (and KAFKA_TOPIC from ``--env``) and prints what arrived on
each topic before the summary. Relative paths are relative to the current directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from devtools.sandbox.errors import SandboxError, SandboxInitError
from devtools.sandbox.sandbox import InvokeResult, Sandbox
from devtools.sandbox.summary import summarize
from kafka_relay.tools.cli import run_cli


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env wants NAME=VALUE, got {text!r}")
    return name, value


def _event(text: str) -> Any:
    """JSON, or @file (relative to the current directory) holding it."""
    try:
        source = Path(text[1:]).read_text() if text.startswith("@") else text
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read {text[1:]} ({exc.strerror}; relative to {Path.cwd()})") from exc
    try:
        return json.loads(source)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--event is not JSON ({exc}): {text[:80]!r}") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=Path, action="append", default=[],
                        help="a layer zip or directory (repeat; merged in order)")
    parser.add_argument("--function", type=Path, required=True, help="function zip or directory")
    parser.add_argument("--handler", required=True, help="module.function")
    parser.add_argument("--event", type=_event, default={},
                        help="the event as JSON, or @file.json (default {})")
    parser.add_argument("--invocations", type=int, default=1)
    parser.add_argument("--env", type=_env_pair, action="append", default=[],
                        help="NAME=VALUE for the function's environment (repeat)")
    parser.add_argument("--timeout", type=float, default=30.0, help="function timeout, s")
    parser.add_argument("--init-timeout", type=float, default=10.0, help="init limit, s")
    parser.add_argument("--memory", type=int, default=256, help="memory size, MB")
    parser.add_argument("--name", default="kafka-relay-sandbox", help="function name")
    parser.add_argument("--log", type=Path, help="write the log stream to this file too")
    parser.add_argument("--mode", default="on-demand",
                        choices=["on-demand", "managed-instances", "snap-start"])
    parser.add_argument("--max-concurrency", type=int,
                        help="managed instances: concurrent invocations (default 2)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="let processes see the interpreter's site-packages")
    parser.add_argument("--with-broker", action="store_true",
                        help="run a local Kafka broker for this run (sets KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--topic", action="append", default=[],
                        help="with --with-broker: create this topic and show what arrived on it "
                        "(repeat; KAFKA_TOPIC from --env is added)")
    parser.add_argument("--allow-spill", action="store_true",
                        help="spilled records do not fail the run (a test of the spill path)")
    return parser


def main(argv: list[str], *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = _parser().parse_args(argv)
    env = dict(args.env)
    if not args.with_broker:
        run = _run(args, env, out=out, err=err)
        return run if isinstance(run, int) else _finish(run, args, out=out, err=err)
    from devtools.kafka_broker import KafkaBroker, create_topics  # noqa: PLC0415 - optional

    topics = list(dict.fromkeys([*args.topic, *([env["KAFKA_TOPIC"]] if "KAFKA_TOPIC" in env
                                                 else [])]))
    with KafkaBroker() as broker:
        err.write(f"local Kafka broker at {broker.bootstrap}; topics: {', '.join(topics) or '-'}\n")
        if topics:
            create_topics(broker.bootstrap, topics)
        run = _run(args, {**env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}, out=out, err=err)
        if isinstance(run, int):
            return run
        _show_topics(broker.bootstrap, topics, out)
    return _finish(run, args, out=out, err=err)


def _show_topics(bootstrap: str, topics: list[str], out: TextIO) -> None:
    from devtools.kafka_broker import read_topic  # noqa: PLC0415 - optional

    out.write("--- topics ---\n")
    for topic in topics:
        records = read_topic(bootstrap, topic, timeout=10)
        out.write(json.dumps({"topic": topic, "records": len(records), "first": [
            {"key": (r.key or b"").decode(errors="replace"),
             "value": (r.value or b"").decode(errors="replace")} for r in records[:3]
        ]}) + "\n")


@dataclass(frozen=True)
class _Run:
    results: list[InvokeResult]
    lines: list[str]


def _run(args: argparse.Namespace, env: dict[str, str], *, out: TextIO,
         err: TextIO) -> _Run | int:
    """The invocations and the log stream, printed; 2 for a sandbox that could not start."""
    results: list[InvokeResult] = []
    init_failed = False
    try:
        sandbox = Sandbox(layers=args.layer, function=args.function, handler=args.handler,
                          env=env, function_name=args.name, memory_mb=args.memory,
                          timeout_s=args.timeout, init_timeout_s=args.init_timeout,
                          log_path=args.log, isolated=not args.no_isolation,
                          mode=args.mode, max_concurrency=args.max_concurrency)
    except SandboxError as exc:
        err.write(f"{exc}\n")
        return 2
    try:
        with sandbox:
            invoked = (sandbox.invoke_many([args.event] * args.invocations)
                       if sandbox.mode.managed_instances
                       else (sandbox.invoke(args.event) for _ in range(args.invocations)))
            for number, result in enumerate(invoked, start=1):
                results.append(result)
                fields = {k: v for k, v in dataclasses.asdict(result).items()
                          if k not in ("raw_payload", "error")}
                out.write(json.dumps({"invocation": number, **fields}, default=str) + "\n")
            shutdown = sandbox.shutdown("spindown")
            out.write(json.dumps({"shutdown": dataclasses.asdict(shutdown)}) + "\n")
            lines = sandbox.log_lines()
    except SandboxInitError as exc:
        err.write(f"{exc}\n")
        init_failed, lines = True, sandbox.log_lines()
    except SandboxError as exc:
        err.write(f"{exc}\n")
        return 2
    out.write("--- log stream ---\n")
    out.writelines(line + "\n" for line in lines)
    return 1 if init_failed else _Run(results, lines)


def _finish(run: _Run, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """The summary; 1 when an invocation failed or the records did not arrive."""
    summary = summarize(run.results, run.lines)
    out.write("--- summary ---\n")
    out.writelines(line + "\n" for line in summary.lines())
    problems = summary.problems(allow_spill=args.allow_spill)
    for problem in problems:
        err.write(f"error: {problem}\n")
    return 1 if summary.failed or problems else 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
