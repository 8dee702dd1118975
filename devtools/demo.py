"""``./build.sh demo``: the main job end to end, on this machine only.

Starts a real Kafka broker and the recorded RSS/Polymarket upstreams on
loopback, runs both producer functions in the local Lambda sandbox with the
built kafka-relay layer attached (several invocations, then SHUTDOWN), prints
what arrived on each topic and the CloudWatch-style log, and exits non-zero
if any record the extension accepted is missing.

Options point it elsewhere: ``--bootstrap`` (a real cluster), ``--layer`` /
``--functions`` (other artifacts), ``--invocations``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
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
from kafka_relay.logs import events_named

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
    outcome = Outcome(producer)
    log_path = workdir / f"{producer.name}.log"
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
    for record in records[:samples]:
        value = (record.value or b"").decode(errors="replace")
        key = (record.key or b"").decode(errors="replace")
        print(f"    key={key[:48]!s:<50} {value[:110]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=Path, default=ROOT / "dist/kafka-relay-layer-x86_64.zip")
    parser.add_argument("--functions", type=Path, default=ROOT / "dist/producer-functions.zip")
    parser.add_argument("--bootstrap", help="use this Kafka instead of a local broker")
    parser.add_argument("--invocations", type=int, default=3)
    parser.add_argument("--samples", type=int, default=3, help="records shown per topic")
    args = parser.parse_args(argv)
    for artifact in (args.layer, args.functions):
        if not artifact.is_file():
            print(f"error: {artifact} is missing: run ./build.sh build first", file=sys.stderr)
            return 2

    broker = None if args.bootstrap else KafkaBroker().start()
    bootstrap = args.bootstrap or (broker.bootstrap if broker else "")
    try:
        topics = [p.topic for p in PRODUCERS]
        create_topics(bootstrap, topics + [f"dlq.{t}" for t in topics])
        with FixtureServer() as server, tempfile.TemporaryDirectory() as tmp:
            print(f"kafka-relay demo: broker {bootstrap}, upstream fixtures {server.url}, "
                  f"layer {args.layer.name} ({args.layer.stat().st_size / 2**20:.2f} MB)")
            env = {**server.env(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                   "KAFKA_RELAY_PORT": str(free_port()),
                   "RSS_STATE_PATH": str(Path(tmp) / "rss-state.json")}
            outcomes = []
            for producer in PRODUCERS:
                print(f"\n== {producer.name}: {args.invocations} invocations, then SHUTDOWN")
                outcomes.append(_run_producer(
                    producer, layer=args.layer, functions=args.functions, env=env,
                    server=server, invocations=args.invocations, workdir=Path(tmp)))
        print("\n== what arrived")
        problems: list[str] = []
        for outcome in outcomes:
            topic = outcome.producer.topic
            records = read_topic(bootstrap, topic, timeout=15)
            _show_topic(topic, records, args.samples)
            dead = read_topic(bootstrap, f"dlq.{topic}", timeout=5, idle=0.3)
            print(f"  dlq.{topic}: {len(dead)} records")
            problems += _check(outcome, records)
        for outcome in outcomes:
            print(f"\n== CloudWatch-style log: /aws/lambda/{outcome.producer.name}")
            for line in outcome.log:
                print("  " + line[:220])
        # Lambda-Architecture views over what arrived (issue 17): devtools/views_demo.py.
        problems += show_views(bootstrap, args.functions)
    finally:
        if broker is not None:
            broker.stop()
    print()
    if problems:
        for problem in problems:
            print(f"MISSING: {problem}", file=sys.stderr)
        return 1
    total = sum(o.summary.get("delivered", 0) for o in outcomes)
    print(f"OK: {total} records accepted by the extension, all delivered, 0 lost.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
