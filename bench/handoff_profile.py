"""CPU per record of the handoff, in one process on loopback (no sandbox, no CPU quota).

    .venv/bin/python -m bench.handoff_profile [--batches 200] [--profile server|client|pump]
        [--transport ring|http]

Starts a local broker and the extension's parts in-process, sends batches with the stdlib
client (its default body and its default transport, the ring file; ``--transport http``:
loopback HTTP) and reports, per record: the client thread's CPU (encode + hand-over), the
handoff threads' CPU (the ring listener's or the HTTP server's: body parse, validation,
accept) and the rest of the
process (the pump and librdkafka's threads), plus the handoff rate. ``--profile`` prints a
cProfile of the client or of the handoff thread, timed on that thread's CPU (waits on the
socket or the GIL are not cost), or of the pump. Numbers go in docs/cost.md ("Per record");
this is a developer's tool, not a timed test.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.kafka_broker import KafkaBroker, create_topics, free_port
from kafka_relay.app import assemble
from kafka_relay.aws_lambda import INVOKE, SHUTDOWN
from kafka_relay.client import RelayClient
from kafka_relay.config import load_config
from kafka_relay.delivery.pump import Pump
from kafka_relay.handoff import server as handoff_server
from kafka_relay.handoff.ring_listener import RingListener
from kafka_relay.observability.log import JsonLogger

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


class _HandlerMeter:
    """Wraps the handoff handlers: CPU of the handoff threads, optionally profiled."""

    def __init__(self, profile: bool) -> None:
        self.cpu_s = 0.0
        self.profile = cProfile.Profile(time.thread_time) if profile else None
        self._lock = threading.Lock()
        self._originals: list[Callable[..., None]] = [getattr(owner, name)
                                                      for owner, name in _HANDLERS]

    def install(self) -> None:
        for (owner, name), original in zip(_HANDLERS, self._originals, strict=True):
            setattr(owner, name, self._metered(original))

    def _metered(self, original: Callable[..., None]) -> Callable[..., None]:
        meter = self

        def handle(*args: Any) -> None:
            start = time.thread_time()
            try:
                if meter.profile is not None:
                    meter.profile.runcall(original, *args)
                else:
                    original(*args)
            finally:
                with meter._lock:
                    meter.cpu_s += time.thread_time() - start

        return handle

    def remove(self) -> None:
        for (owner, name), original in zip(_HANDLERS, self._originals, strict=True):
            setattr(owner, name, original)


def run(bootstrap: str, *, count: int, size: int, batches: int, profile: str | None,
        sort: str = "tottime", transport: str = "ring") -> None:
    topic = f"profile-{size}b"
    create_topics(bootstrap, [topic])
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
                              "KAFKA_RELAY_TOKEN": _TOKEN, "KAFKA_RELAY_PORT": str(free_port()),
                              "KAFKA_RELAY_SPOOL_DIR": str(Path(tmp) / "spool"),
                              "KAFKA_RELAY_JOURNAL_DIR": str(Path(tmp) / "journal"),
                              "KAFKA_RELAY_RING_DIR": str(Path(tmp) / "ring"),
                              "KAFKA_RELAY_TELEMETRY": "false"})
        meter = _HandlerMeter(profile == "server")
        meter.install()
        pump_profile = cProfile.Profile() if profile == "pump" else None
        original_run = Pump.run
        if pump_profile is not None:
            def profiled(pump: Pump) -> None:
                pump_profile.runcall(original_run, pump)

            Pump.run = profiled  # type: ignore[method-assign,assignment]
        parts = assemble(config, JsonLogger(stream=io.StringIO(), level="ERROR"),
                         (INVOKE, SHUTDOWN))
        Pump.run = original_run  # type: ignore[method-assign]
        client = RelayClient(env={"KAFKA_RELAY_RING_DIR": str(Path(tmp) / "ring"),
                                  "KAFKA_RELAY_RING": str(transport == "ring")},
                             port=config.port, token=_TOKEN)
        try:
            work = [make_records(count, size, b) for b in range(batches)]
            client.send(work[0])  # warm: connection, topic metadata
            client.flush()
            meter.cpu_s = 0.0
            client_profile = cProfile.Profile(time.thread_time) if profile == "client" else None
            cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            for batch in work[1:]:
                if client_profile is not None:
                    client_profile.runcall(client.send, batch)
                else:
                    client.send(batch)
            wall = time.perf_counter() - wall0
            client_cpu = time.thread_time() - thread0
            flushed = client.flush()
            total_cpu = time.process_time() - cpu0
        finally:
            client.close()
            parts.engine.stop()
            parts.server.stop()
            if parts.rings is not None:
                parts.rings.stop()
            meter.remove()
        n = count * (batches - 1)
        rest = total_cpu - client_cpu - meter.cpu_s
        print(f"{transport}: {count} x {size} B, {batches - 1} batches: client "
              f"{client_cpu / n * 1e6:.1f} us/record, handoff thread "
              f"{meter.cpu_s / n * 1e6:.1f} us/record, pump + "
              f"librdkafka {rest / n * 1e6:.1f} us/record; handoff {n / wall:,.0f} records/s; "
              f"flush left {flushed['remaining']}")
        chosen = client_profile or meter.profile or pump_profile
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
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--transport", choices=("ring", "http"), default="ring",
                        help="the client's transport (default: its own default, the ring)")
    args = parser.parse_args()
    cases = [tuple(int(n) for n in case.split("x", 1)) for case in args.cases]
    if args.bootstrap:
        for count, size in cases:
            run(args.bootstrap, count=count, size=size, batches=args.batches,
                profile=args.profile, sort=args.sort, transport=args.transport)
        return
    with KafkaBroker() as broker:
        for count, size in cases:
            run(broker.bootstrap, count=count, size=size, batches=args.batches,
                profile=args.profile, sort=args.sort, transport=args.transport)


if __name__ == "__main__":
    main()
