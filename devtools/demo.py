"""``./build.sh demo``: the main job end to end, on this machine only.

Starts a real Kafka broker and the recorded RSS/Polymarket upstreams on
loopback, runs both producer functions in the local Lambda sandbox with the
built kafka-relay layer attached (several invocations, then SHUTDOWN), prints
what arrived on each topic and the CloudWatch-style log, and exits non-zero
if any record the extension accepted is missing.

Options point it elsewhere: ``--bootstrap`` (a real cluster, with
``--security-protocol`` / ``--sasl-mechanism`` / ``--api-key``; the secret from
``KAFKA_API_SECRET``), ``--dist`` or ``--layer`` / ``--functions`` (other
artifacts), ``--invocations``. Each function's full log stream stays in
``--log-dir`` (default build/demo/).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.fixture_server import FixtureServer
from devtools.kafka_broker import (
    ConsumedRecord,
    KafkaBroker,
    create_topics,
    free_port,
    read_topic,
)
from devtools.sandbox import InvokeResult, Sandbox
from devtools.views_demo import show_views
from kafka_relay.tools import logs
from kafka_relay.tools.table import events_named

#: --bootstrap's security settings: option -> (extension variable, librdkafka property).
SECURITY = {
    "security_protocol": ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    "sasl_mechanism": ("KAFKA_SASL_MECHANISM", "sasl.mechanisms"),
    "api_key": ("KAFKA_API_KEY", "sasl.username"),
    "api_secret": ("KAFKA_API_SECRET", "sasl.password"),
}

ROOT = Path(__file__).resolve().parent.parent
EXTRA_ITEM = """<item>
  <title>Late update: markets react to the rate decision</title>
  <link>https://news.example.com/world/late-update</link>
  <guid>https://news.example.com/world/late-update</guid>
  <pubDate>Mon, 23 Nov 2026 09:30:00 +0000</pubDate>
  <description>An entry that appeared between two scheduled runs.</description>
</item>
"""


@dataclass(frozen=True)
class Producer:
    name: str
    handler: str
    topic: str
    between_invocations: Callable[[FixtureServer, int], None] = lambda server, n: None


@dataclass
class Outcome:
    producer: Producer
    log_path: Path
    results: list[InvokeResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    shutdown_ms: float = 0.0

    @property
    def sent(self) -> int:
        return sum(int((r.payload or {}).get("sent", 0)) for r in self.results)


def _new_feed_entry(server: FixtureServer, invocation: int) -> None:
    """Before the second RSS run, the feed gains one entry (the others answer 304)."""
    if invocation != 1:
        return
    feed = ROOT / "devtools" / "fixtures" / "rss" / "world_news_rss2.xml"
    text = feed.read_text(encoding="utf-8").replace("</channel>", EXTRA_ITEM + "</channel>")
    server.put("/rss/world_news_rss2.xml", text.encode())


PRODUCERS = (
    Producer("rss-producer", "rss_producer.handler", "rss.events", _new_feed_entry),
    Producer("polymarket-producer", "polymarket_producer.handler", "polymarket.price_hourly"),
)


def _run_producer(
    producer: Producer, *, layer: Path, functions: Path, env: dict[str, str],
    server: FixtureServer, invocations: int, workdir: Path,
) -> Outcome:
    log_path = workdir / f"{producer.name}.log"
    log_path.unlink(missing_ok=True)  # the sandbox appends; keep this run's log only
    outcome = Outcome(producer, log_path=log_path)
    with Sandbox(layers=[layer], function=functions, handler=producer.handler,
                 env={**env, "KAFKA_TOPIC": producer.topic}, function_name=producer.name,
                 timeout_s=30.0, log_path=log_path) as sandbox:
        for n in range(invocations):
            producer.between_invocations(server, n)
            result = sandbox.invoke({"source": "aws.events", "detail-type": "Scheduled Event"})
            outcome.results.append(result)
            payload = result.payload if isinstance(result.payload, dict) else {}
            print(f"  invoke {n + 1}: {result.status:<7} fetched={payload.get('fetched', '?'):<3} "
                  f"sent={payload.get('sent', '?'):<3} "
                  f"duplicates={payload.get('skipped_duplicates', '?'):<3} "
                  f"errors={len(payload.get('errors', []))}  "
                  f"caller {result.caller_ms:.1f} ms, billed {result.billed_ms} ms"
                  + (f", init {result.init_ms:.0f} ms" if result.init_ms else ""))
        started = time.monotonic()
        shutdown = sandbox.shutdown("spindown")
        outcome.shutdown_ms = (time.monotonic() - started) * 1000
        print(f"  shutdown: spindown in {outcome.shutdown_ms:.0f} ms, exit codes "
              f"{shutdown.exit_codes}, killed {shutdown.killed or 'none'}")
        outcome.log = sandbox.log_lines()
    for event in events_named(outcome.log, "shutdown.summary"):
        outcome.summary = event
    return outcome


def _check(outcome: Outcome, records: list[ConsumedRecord]) -> list[str]:
    """What is wrong with what arrived; empty when every record is accounted for."""
    problems = []
    name = outcome.producer.name
    failed = [r for r in outcome.results if r.status != "success"]
    if failed:
        problems.append(f"{name}: {len(failed)} invocation(s) failed: {failed[0].error}")
    summary = outcome.summary
    if not summary:
        problems.append(f"{name}: the extension logged no shutdown.summary")
        return problems
    ids = {r.headers.get("x-relay-id", b"").decode() for r in records}
    if summary.get("unaccounted") != 0:
        problems.append(f"{name}: the extension reports {summary.get('unaccounted')} "
                        "unaccounted records")
    if summary.get("accepted") != outcome.sent:
        problems.append(f"{name}: handlers sent {outcome.sent}, extension accepted "
                        f"{summary.get('accepted')}")
    if len(ids) != summary.get("delivered"):
        problems.append(f"{name}: extension delivered {summary.get('delivered')}, "
                        f"{len(ids)} distinct records on {outcome.producer.topic}")
    if outcome.sent == 0:
        problems.append(f"{name}: nothing was sent (the fixtures should yield records)")
    return problems


def _show_topic(topic: str, records: list[ConsumedRecord], samples: int) -> None:
    ids = {r.headers.get("x-relay-id") for r in records}
    print(f"  {topic}: {len(records)} records, {len(ids)} distinct x-relay-id")
    by_key = {record.key: record for record in reversed(records)}  # the first of each key
    for record in list(by_key.values())[::-1][:samples]:
        value = (record.value or b"").decode(errors="replace")
        key = (record.key or b"").decode(errors="replace")
        print(f"    key={key[:48]!s:<50} {value[:110]}")


def logs_command(log_path: Path) -> str:
    """The logs CLI for a kept log, as a command that runs as printed from any directory:
    this interpreter with the checkout's package (the demo installs no console scripts)."""
    return (f"PYTHONPATH={shlex.quote(str(ROOT / 'extension'))} {shlex.quote(sys.executable)} "
            f"-m kafka_relay.tools.logs --file {shlex.quote(str(log_path))}")


def _show_log(outcome: Outcome) -> None:
    """The logs CLI's per-invocation table for the function's full log, kept on disk."""
    print(f"\n== /aws/lambda/{outcome.producer.name}: {logs_command(outcome.log_path)}")
    logs.main(["--file", str(outcome.log_path)], env={}, stdout=sys.stdout, stderr=sys.stderr)


def kafka_settings(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[
        dict[str, str], dict[str, str | int | float | bool]]:
    """(the extension's KAFKA_* variables, the demo's own client config) for --bootstrap:
    each option, else the same KAFKA_* variable from the environment."""
    variables: dict[str, str] = {}
    client: dict[str, str | int | float | bool] = {}
    for option, (variable, rdkafka) in SECURITY.items():
        value = getattr(args, option) or env.get(variable)
        if value:
            variables[variable] = value
            client[rdkafka] = value
    return variables, client


def reach(bootstrap: str, client: Mapping[str, str | int | float | bool], *,
          timeout_s: float) -> str | None:
    """None when the cluster answers a metadata request; else why not, in one line."""
    from confluent_kafka import KafkaException  # noqa: PLC0415 - the broker module loads it
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    errors: list[str] = []
    # librdkafka's own FAIL lines would bury the one-line answer: errors come via error_cb.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, **client, "log_level": 0,
                              "error_cb": lambda error: errors.append(error.str())}
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0]
        return errors[-1] if errors else error.str() if hasattr(error, "str") else str(error)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./build.sh demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist",
                        help="where the layer and function zips are (default: dist)")
    parser.add_argument("--layer", type=Path, help="default: <dist>/kafka-relay-layer-<arch>.zip")
    parser.add_argument("--functions", type=Path, help="default: <dist>/producer-functions.zip")
    parser.add_argument("--views-functions", type=Path,
                        help="default: <dist>/views-functions.zip")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "build" / "demo",
                        help="each function's full log stream goes here (default: build/demo)")
    parser.add_argument("--invocations", type=int, default=3)
    parser.add_argument("--samples", type=int, default=3, help="records shown per topic")
    remote = parser.add_argument_group(
        "a real cluster", "each setting defaults to the same KAFKA_* environment variable")
    remote.add_argument("--bootstrap", help="use this Kafka instead of a local broker")
    remote.add_argument("--connect-timeout", type=float, default=15.0,
                        help="seconds to wait for the cluster to answer (default: %(default)s)")
    remote.add_argument("--security-protocol", help="e.g. SASL_SSL (KAFKA_SECURITY_PROTOCOL)")
    remote.add_argument("--sasl-mechanism", help="e.g. PLAIN, SCRAM-SHA-512 "
                        "(KAFKA_SASL_MECHANISM)")
    remote.add_argument("--api-key", help="SASL user name (KAFKA_API_KEY)")
    remote.add_argument("--api-secret", help="SASL password; prefer KAFKA_API_SECRET in the "
                        "environment (a command line is visible to other users)")
    return parser


def main(argv: list[str] | None = None, *, env: Mapping[str, str] = os.environ) -> int:
    args = _parser().parse_args(argv)
    arch = "arm64" if os.uname().machine == "aarch64" else "x86_64"
    layer = args.layer or args.dist / f"kafka-relay-layer-{arch}.zip"
    functions = args.functions or args.dist / "producer-functions.zip"
    views = args.views_functions or args.dist / "views-functions.zip"
    for artifact in (layer, functions, views):
        if not artifact.is_file():
            print(f"error: {artifact} is missing: run ./build.sh build first", file=sys.stderr)
            return 2
    variables, client = kafka_settings(args, env) if args.bootstrap else ({}, {})
    if args.bootstrap:
        print(f"==> reaching {args.bootstrap} (up to {args.connect_timeout:.0f} s)", flush=True)
        failure = reach(args.bootstrap, client, timeout_s=args.connect_timeout)
        if failure:
            print(f"error: cannot reach Kafka at {args.bootstrap}: {failure}. Check --bootstrap, "
                  "the network, and --security-protocol / --sasl-mechanism / --api-key / "
                  "KAFKA_API_SECRET", file=sys.stderr)
            return 2
    else:
        print("==> starting a local Kafka broker", flush=True)
    broker = None if args.bootstrap else KafkaBroker().start()
    bootstrap = args.bootstrap or (broker.bootstrap if broker else "")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        topics = [p.topic for p in PRODUCERS]
        create_topics(bootstrap, topics + [f"dlq.{t}" for t in topics], client_config=client,
                      replication_factor=-1 if args.bootstrap else 1)
        with FixtureServer() as server, tempfile.TemporaryDirectory() as tmp:
            print(f"kafka-relay demo: broker {bootstrap}, upstream fixtures {server.url}, "
                  f"layer {layer.name} ({layer.stat().st_size / 2**20:.2f} MB)")
            env_vars = {**server.env(), **variables, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                        "KAFKA_RELAY_PORT": str(free_port()),
                        "RSS_STATE_PATH": str(Path(tmp) / "rss-state.json")}
            outcomes = []
            for producer in PRODUCERS:
                print(f"\n== {producer.name}: {args.invocations} invocations, then SHUTDOWN")
                outcomes.append(_run_producer(
                    producer, layer=layer, functions=functions, env=env_vars,
                    server=server, invocations=args.invocations, workdir=args.log_dir))
        print("\n== what arrived")
        problems: list[str] = []
        for outcome in outcomes:
            topic = outcome.producer.topic
            # The extensions have shut down: what they delivered is acknowledged, so the end of
            # each partition is the end (no second of idle waiting for stragglers).
            records = read_topic(bootstrap, topic, timeout=15, idle=0.2, client_config=client)
            _show_topic(topic, records, args.samples)
            dead = read_topic(bootstrap, f"dlq.{topic}", timeout=5, idle=0.3,
                              client_config=client)
            print(f"  dlq.{topic}: {len(dead)} records")
            problems += _check(outcome, records)
        for outcome in outcomes:
            _show_log(outcome)
        # The Lambda-Architecture views over what arrived: devtools/views_demo.py.
        problems += show_views(bootstrap, views)
    finally:
        if broker is not None:
            broker.stop()
    print()
    if problems:
        for problem in problems:
            print(f"MISSING: {problem}", file=sys.stderr)
        return 1
    total = sum(o.summary.get("delivered", 0) for o in outcomes)
    print(f"OK: {total} records accepted by the extension, all delivered, 0 lost. Full logs: "
          f"{', '.join(str(o.log_path) for o in outcomes)}")
    return 0


if __name__ == "__main__":
    from kafka_relay.tools.cli import run_cli

    raise SystemExit(run_cli(main))
