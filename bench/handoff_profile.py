"""CPU per record of the handoff, in one process on loopback (no sandbox, no CPU quota).

    .venv/bin/python -m bench.handoff_profile [--batches 200] [--profile server|client|pump]
        [--transport ring|http] [--delivery [--flush-after MS | --gap MS]] [--rtt MS]

Starts a local broker and the extension's parts in-process, sends batches with the stdlib
client (its default body and its default transport, the ring file; ``--transport http``:
loopback HTTP) and reports, per record: the client thread's CPU (encode + hand-over), the
handoff threads' CPU (the ring listener's or the HTTP server's: body parse, validation,
accept), the pump thread's and the rest of the process (the pump and librdkafka's threads),
plus the handoff rate. ``--delivery`` measures the delivery side alone: each batch's records
handed straight to the engine (no client, no transport), then waited for until settled, as an
invocation's would be; ``--flush-after MS``: the handler works MS, then the batch is flushed (as
``end`` does; the flush's wait is reported); ``--gap MS``: nobody waits, the next batch comes
MS later (as ``auto`` does once it defers). ``--rtt MS``: the broker behind the bench's latency
proxy (its asyncio thread's CPU lands in "pump + librdkafka", not in the pump thread's). The
pump's rounds (``Pump.step`` calls) per batch are reported. ``--profile`` prints a cProfile
of the client, the handoff threads or the pump thread, timed on that thread's CPU (waits on
the socket, the GIL or librdkafka are not cost). Numbers go in docs/cost.md ("Per record");
this is a developer's tool, not a timed test.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.infra import network
from bench.threads import read_tasks
from devtools.kafka_broker import KafkaBroker, create_topics, free_port
from kafka_relay.app import assemble
from kafka_relay.aws_lambda import INVOKE, SHUTDOWN
from kafka_relay.client import RelayClient
from kafka_relay.config import load_config
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.delivery.pump import Pump
from kafka_relay.handoff import server as handoff_server
from kafka_relay.handoff.ring_listener import RingListener
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import IdSource, Record

_TOKEN = "profile-token"
_FILLER = "x" * 4096


def make_records(count: int, size: int, batch: int) -> list[dict[str, Any]]:
    """Like bench_handlers.records: a key and a JSON object of about ``size`` bytes."""
    base = {"run": "profile", "n": batch, "i": 0, "ts": 1_700_000_000_000, "pad": ""}
    overhead = len(str(base)) + 20
    pad = _FILLER[: max(0, size - overhead)]
    return [{"key": f"profile-{batch}-{i}",
             "value": {"run": "profile", "n": batch, "i": i, "ts": 1_700_000_000_000,
                       "pad": pad}} for i in range(count)]


# What each transport runs per body on the extension's side: (class, method) metered.
_HANDLERS: list[tuple[Any, str]] = [(handoff_server._Handler, "handle"),
                                    (RingListener, "_readable")]
_PUMP: list[tuple[Any, str]] = [(Pump, "run")]


class _Meter:
    """Wraps methods the measured threads run (the handoff handlers, the pump's body): their
    CPU, optionally profiled."""

    def __init__(self, methods: list[tuple[Any, str]], profile: bool) -> None:
        self.cpu_s = 0.0
        self.profile = cProfile.Profile(time.thread_time) if profile else None
        self._lock = threading.Lock()
        self._methods = methods
        self._originals: list[Callable[..., None]] = [getattr(owner, name)
                                                      for owner, name in methods]

    def install(self) -> None:
        for (owner, name), original in zip(self._methods, self._originals, strict=True):
            setattr(owner, name, self._metered(original))

    def _metered(self, original: Callable[..., None]) -> Callable[..., None]:
        meter = self

        def measured(*args: Any) -> None:
            start = time.thread_time()
            try:
                if meter.profile is not None:
                    meter.profile.runcall(original, *args)
                else:
                    original(*args)
            finally:
                with meter._lock:
                    meter.cpu_s += time.thread_time() - start

        return measured

    def remove(self) -> None:
        for (owner, name), original in zip(self._methods, self._originals, strict=True):
            setattr(owner, name, original)


def _librdkafka_cpu_s() -> float:
    """CPU of this process's librdkafka threads (named ``rdk:...``) so far, from each thread's
    schedstat (ns, unlike ``stat``'s 10 ms ticks). They live as long as the producer, so the
    difference across a run is theirs."""
    return sum(task.cpu_ns for task in read_tasks(os.getpid()).values()
               if task.kernel_name.startswith("rdk:")) / 1e9


class _Rounds:
    """Counts the pump's rounds (``Pump.step`` calls) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._step = Pump.step

    def install(self) -> None:
        step = self._step

        def counted(pump: Pump) -> bool:
            self.count += 1
            return step(pump)

        Pump.step = counted  # type: ignore[method-assign,assignment]

    def remove(self) -> None:
        Pump.step = self._step  # type: ignore[method-assign]


def _deliver(engine: DeliveryEngine, topic: str, batches: list[list[dict[str, Any]]], *,
             flush_after_ms: float | None, gap_ms: float | None) -> list[float]:
    """Each batch accepted straight into ``engine``, then (by default) waited for until
    settled; ``flush_after_ms``: flushed that long after; ``gap_ms``: the next batch that long
    after, nobody waiting. The flushes' waits in ms (none without ``flush_after_ms``)."""
    ids = IdSource()
    waits: list[float] = []
    for number, batch in enumerate(batches):
        records = [Record(record_id, topic, item["key"].encode(),
                          json.dumps(item["value"], separators=(",", ":")).encode(), (), None,
                          f"request-{number}")
                   for record_id, item in zip(ids.take(len(batch)), batch, strict=True)]
        engine.accept(records)
        if flush_after_ms is not None:
            time.sleep(flush_after_ms / 1000)
            waits.append(engine.flush(10).duration_ms)
        elif gap_ms is not None:
            time.sleep(gap_ms / 1000)
        else:
            deadline = time.monotonic() + 10
            while engine.gauge().pending and time.monotonic() < deadline:
                time.sleep(0.001)
    return waits


def run(bootstrap: str, *, count: int, size: int, batches: int, profile: str | None,
        sort: str = "tottime", transport: str = "ring", delivery: bool = False,
        flush_after_ms: float | None = None, gap_ms: float | None = None) -> None:
    topic = f"profile-{size}b"
    create_topics(bootstrap, [topic])
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
                              "KAFKA_RELAY_TOKEN": _TOKEN, "KAFKA_RELAY_PORT": str(free_port()),
                              "KAFKA_RELAY_SPOOL_DIR": str(Path(tmp) / "spool"),
                              "KAFKA_RELAY_JOURNAL_DIR": str(Path(tmp) / "journal"),
                              "KAFKA_RELAY_RING_DIR": str(Path(tmp) / "ring"),
                              "KAFKA_RELAY_TELEMETRY": "false",
                              # librdkafka settings to compare (KAFKA_PRODUCER_LINGER_MS=20 ...)
                              **{name: value for name, value in os.environ.items()
                                 if name.startswith("KAFKA_PRODUCER_")}})
        meter = _Meter(_HANDLERS, profile == "server")
        meter.install()
        pump_meter = _Meter(_PUMP, profile == "pump")
        pump_meter.install()
        parts = assemble(config, JsonLogger(stream=io.StringIO(), level="ERROR"),
                         (INVOKE, SHUTDOWN))
        pump_meter.remove()
        client = RelayClient(env={"KAFKA_RELAY_RING_DIR": str(Path(tmp) / "ring"),
                                  "KAFKA_RELAY_RING": str(transport == "ring")},
                             port=config.port, token=_TOKEN)
        try:
            work = [make_records(count, size, b) for b in range(batches)]
            client.send(work[0])  # warm: connection, topic metadata
            client.flush()
            meter.cpu_s = 0.0
            rounds = _Rounds()
            rounds.install()
            waits: list[float] = []
            client_profile = cProfile.Profile(time.thread_time) if profile == "client" else None
            cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            rdk0 = _librdkafka_cpu_s()
            if delivery:
                waits = _deliver(parts.engine, topic, work[1:], flush_after_ms=flush_after_ms,
                                 gap_ms=gap_ms)
            for batch in [] if delivery else work[1:]:
                if client_profile is not None:
                    client_profile.runcall(client.send, batch)
                else:
                    client.send(batch)
            wall = time.perf_counter() - wall0
            client_cpu = time.thread_time() - thread0
            flushed = client.flush()
            total_cpu = time.process_time() - cpu0
            rdk_cpu = _librdkafka_cpu_s() - rdk0
            rounds.remove()
        finally:
            client.close()
            parts.engine.stop()
            parts.server.stop()
            if parts.rings is not None:
                parts.rings.stop()
            meter.remove()
        n = count * (batches - 1)
        rest = total_cpu - client_cpu - meter.cpu_s
        pump = (f"pump + librdkafka {rest / n * 1e6:.1f} us/record (the pump thread "
                f"{pump_meter.cpu_s / n * 1e6:.1f}, librdkafka's threads {rdk_cpu / n * 1e6:.1f}, "
                f"{rounds.count / (batches - 1):.1f} rounds per batch)")
        if waits:
            waits.sort()
            pump += (f"; flush wait median {waits[len(waits) // 2]:.2f} ms, p90 "
                     f"{waits[len(waits) * 9 // 10]:.2f} ms")
        if delivery:  # the main thread built and accepted the records, and waited
            print(f"{count} x {size} B, {batches - 1} batches, delivery alone: {pump}")
        else:
            print(f"{transport}: {count} x {size} B, {batches - 1} batches: client "
                  f"{client_cpu / n * 1e6:.1f} us/record, handoff threads "
                  f"{meter.cpu_s / n * 1e6:.1f} us/record, {pump}; handoff {n / wall:,.0f} "
                  f"records/s; flush left {flushed['remaining']}")
        chosen = client_profile or meter.profile or pump_meter.profile
        if chosen is not None:
            out = io.StringIO()
            pstats.Stats(chosen, stream=out).sort_stats(sort).print_stats(24)
            print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--profile", choices=("server", "client", "pump"))
    parser.add_argument("--cases", nargs="+", default=["100x1024", "500x300"],
                        metavar="COUNTxBYTES", help="records per batch x bytes per record")
    parser.add_argument("--sort", default="tottime", help="pstats order: tottime, cumulative")
    parser.add_argument("--delivery", action="store_true",
                        help="the delivery side alone: records accepted straight into the engine")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--transport", choices=("ring", "http"), default="ring",
                        help="the client's transport (default: its own default, the ring)")
    waiting = parser.add_mutually_exclusive_group()
    waiting.add_argument("--flush-after", type=float, metavar="MS",
                         help="with --delivery: flush each batch MS after it (as 'end')")
    waiting.add_argument("--gap", type=float, metavar="MS",
                         help="with --delivery: the next batch MS later, nobody waiting")
    parser.add_argument("--rtt", type=float, metavar="MS",
                        help="a local broker behind the bench's latency proxy")
    args = parser.parse_args()
    cases = [tuple(int(n) for n in case.split("x", 1)) for case in args.cases]
    options: dict[str, Any] = {
        "batches": args.batches, "profile": args.profile, "sort": args.sort,
        "transport": args.transport, "delivery": args.delivery,
        "flush_after_ms": args.flush_after, "gap_ms": args.gap}
    if args.bootstrap:
        for count, size in cases:
            run(args.bootstrap, count=count, size=size, **options)
        return
    if args.rtt is not None:
        with network() as net:
            net.set_rtt(args.rtt)
            for count, size in cases:
                run(net.bootstrap, count=count, size=size, **options)
        return
    with KafkaBroker() as broker:
        for count, size in cases:
            run(broker.bootstrap, count=count, size=size, **options)


if __name__ == "__main__":
    main()
