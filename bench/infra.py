"""What every measurement stands on: the broker behind a latency proxy, the layers, sandboxes,
the extension's log lines and its process in /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools.faultproxy import FaultProxy
from devtools.kafka_broker import KafkaBroker, create_topics, free_port, read_topic
from devtools.procfs import START_TIME, stat_fields
from devtools.sandbox import Sandbox, SandboxInitError
from layer_build.manifest import Manifest
from layer_build.zipper import extract_zip

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = Path(__file__).resolve().parent / "functions"
EXTENSION_MODULE = b"kafka_relay"


class BenchError(RuntimeError):
    """The benchmark cannot run or a measurement went wrong; the message says what to do."""


# -- the broker, one proxy hop away ----------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What reached a topic, by key: ``lost`` expected keys are missing."""

    expected: int
    found: int
    lost: int
    duplicates: int

    @classmethod
    def of(cls, expected_keys: Iterable[str], keys: Sequence[str]) -> Delivery:
        """Which of ``expected_keys`` are among the ``keys`` read from a topic; duplicates
        count the expected keys read more than once."""
        expected = set(expected_keys)
        mine = [k for k in keys if k in expected]
        found = set(mine)
        return cls(expected=len(expected), found=len(found), lost=len(expected - found),
                   duplicates=len(mine) - len(found))


# How the round trip to the broker is delayed. The field's latency belongs in the kernel
# (``tc netem``), where it costs the measured processes no CPU; but on loopback it would also
# delay the handler's handoff and the Runtime API, so it needs the broker in a network
# namespace of its own behind a veth pair with netem on it. That path is not built: the
# machines the bench runs on so far have no netem qdisc (``probe_netem`` says why), and it
# cannot be tested without one. The userspace proxy adds the delay instead: an asyncio
# thread in the bench's own process, outside the sandbox's CPU quota but on the same cores.
PROXY_DELAY = "userspace proxy (devtools/faultproxy.py)"


def probe_netem() -> str | None:
    """None when ``tc netem`` works inside a network namespace created here (then deleted),
    else why not (no ``ip``/``tc``, no privilege, no netem qdisc in the kernel)."""
    name = f"kafka-relay-bench-{os.getpid()}"
    steps = (["ip", "netns", "add", name],
             ["ip", "-n", name, "link", "set", "lo", "up"],
             ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
              "delay", "1ms"])
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=10, check=False)
            if done.returncode != 0:
                return f"{' '.join(step)}: {done.stderr.strip() or f'exit {done.returncode}'}"
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10,
                           check=False)


def delay_source(netem_problem: str | None) -> str:
    """What delivers the bench's RTT, for its output."""
    if netem_problem is None:
        return (f"{PROXY_DELAY}: netem works in a namespace here, but the broker-namespace "
                "path is not built (see bench/infra.py)")
    return f"{PROXY_DELAY}: kernel netem unavailable ({netem_problem})"


class Network:
    """A local broker reachable only through a proxy that adds round-trip latency."""

    def __init__(self, broker: KafkaBroker, proxy: FaultProxy) -> None:
        self._broker = broker
        self._proxy = proxy
        self.rtt_ms = 0.0

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap

    def set_rtt(self, rtt_ms: float) -> None:
        """Half the round trip each way."""
        self._proxy.set_latency(up_ms=rtt_ms / 2, down_ms=rtt_ms / 2)
        self.rtt_ms = rtt_ms

    def hold(self) -> None:
        """Hold every byte between clients and broker (connections stay open)."""
        self._proxy.pause()

    def release(self) -> None:
        self._proxy.resume()

    def cut(self) -> None:
        """The broker goes away: connections close, new ones are refused."""
        self._proxy.cut()

    def restore(self) -> None:
        self._proxy.restore()

    def create_topic(self, label: str) -> str:
        name = f"bench.{label}.{uuid.uuid4().hex[:8]}"
        create_topics(self.bootstrap, [name])
        return name

    def keys(self, topic: str, *, timeout: float) -> list[str]:
        """The keys of everything on ``topic``, read from the beginning."""
        got = read_topic(self.bootstrap, topic, timeout=timeout, idle=0.5)
        return [r.key.decode() if r.key is not None else "" for r in got]

    def delivery(self, topic: str, expected_keys: Iterable[str], *, timeout: float) -> Delivery:
        """Read all of ``topic`` back and count which of ``expected_keys`` arrived."""
        return Delivery.of(expected_keys, self.keys(topic, timeout=timeout))


@contextmanager
def network() -> Iterator[Network]:
    """A Tansu broker advertising the proxy's port, so every client goes through the proxy."""
    proxy_port = free_port()
    with (
        KafkaBroker(advertised_port=proxy_port) as broker,
        FaultProxy(broker.listen_address, port=proxy_port) as proxy,
    ):
        yield Network(broker, proxy)


# -- layers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layers:
    relay: Path  # the built layer zip, extension included
    client_only: Path  # the same layer's python/ only: confluent-kafka importable, no extension


def prepare_layers(layer_zip: Path, workdir: Path) -> Layers:
    if not layer_zip.is_file():
        raise BenchError(f"{layer_zip} is missing: run ./build.sh bench (it builds the layer "
                         "first) or python -m layer_build.build --arch x86_64")
    client_only = workdir / "client-only-layer"
    extract_zip(layer_zip, client_only)
    shutil.rmtree(client_only / "extensions", ignore_errors=True)
    return Layers(relay=layer_zip, client_only=client_only)


def layer_sizes(dist: Path) -> dict[str, dict[str, int]]:
    """Per architecture in dist/manifest.json: zipped and unzipped bytes of the layer."""
    manifest = Manifest.load(dist)
    return {
        a.arch: {"zipped_bytes": a.zipped_bytes, "unzipped_bytes": a.unzipped_bytes}
        for a in manifest.artifacts
        if a.kind == "layer"
    }


# -- sandboxes -------------------------------------------------------------------------------


def sandbox(
    *,
    net: Network,
    layer: Path,
    handler: str,
    topic: str,
    workdir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    memory_mb: int = 1769,
) -> Sandbox:
    """A sandbox for one scenario: its own handoff port and spool, its log kept in workdir,
    the CPU quota of ``memory_mb`` as in Lambda."""
    return Sandbox(
        layers=[layer],
        function=FUNCTIONS,
        handler=f"bench_handlers.{handler}",
        env={
            "KAFKA_BOOTSTRAP_SERVERS": net.bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_RELAY_PORT": str(free_port()),
            "KAFKA_RELAY_SPOOL_DIR": str(workdir / f"spool-{name}"),
            **(env or {}),
        },
        function_name=f"bench-{name}",
        memory_mb=memory_mb,
        cpu_quota=True,
        timeout_s=timeout_s,
        init_timeout_s=20.0,
        log_path=workdir / f"{name}.log",
    )


# -- the extension's process -----------------------------------------------------------------


def extension_pid(sb: Sandbox) -> int:
    """The pid running ``python -m kafka_relay`` (the launcher execs it, so one pid)."""
    for pid in sb.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if EXTENSION_MODULE in argv:
            return pid
    raise BenchError(f"no kafka_relay process among the sandbox's pids {sb.pids()}: did the "
                     "layer's extension start? see the sandbox log")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def process_start_epoch(pid: int) -> float:
    """When ``pid`` started, in epoch seconds (the kernel counts in clock ticks: ±10 ms)."""
    start_ticks = int(stat_fields(Path(f"/proc/{pid}/stat").read_text())[START_TIME])
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    now = time.time()
    return now - (uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def start_or_unsupported(sb: Sandbox, *, setting: str) -> str | None:
    """Run the init phase; a sentence when the extension refused ``setting`` (this build does
    not know the value yet), None when it started. Any other init failure raises."""
    try:
        sb.start()
    except SandboxInitError as exc:
        if setting in str(exc):
            return f"skipped: not supported by this build ({exc.error_type}: {setting})"
        raise
    return None
