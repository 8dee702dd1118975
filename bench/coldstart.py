"""Cold start side by side: environment start → first invocation returned, for kafka-relay and
for an in-handler producer created at init, at each memory size under its CPU quota.

Each sample starts both environments afresh (the order alternating, so the machine's noise
falls on both alike), invokes each once with the same workload and spins it down. The
relay's extension also reports its own start: ``init.ready``'s wall time after launch, its
kernel process start, and its CPU since the process started when it sent its first ``/next``
(``cpu_ms``, every thread); the environment's cgroup counts the extension's CPU over the
whole init phase.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.infra import BenchError, Layers, Network, extension_pid, process_start_epoch, sandbox
from bench.stats import Summary
from devtools.sandbox import Sandbox
from kafka_relay.tools.table import events_named

#: The baseline's handler module creates its producer at import (see bench_handlers).
PRODUCER_AT_INIT = {"BENCH_PRODUCER_AT_INIT": "1"}


@dataclass(frozen=True)
class FirstReturn:
    """One case's cold starts: init, then the first invocation."""

    first_ms: Summary  # environment start → the first invocation's response (wall)
    first_cpu_ms: Summary  # CPU of every process in the environment over the same span
    init_ms: Summary


@dataclass(frozen=True)
class InitResult:
    memory_mb: int
    rtt_ms: float
    records: int  # in the first invocation
    relay: FirstReturn
    in_handler: FirstReturn  # a module-level producer created at init, flushed per invocation
    ready_ms: Summary  # the sandbox launching the extension -> its init.ready log line
    kernel_ready_ms: Summary  # the kernel's process start time -> init.ready (±10 ms ticks)
    ready_cpu_ms: Summary | None  # the extension's own count: its CPU at its first /next
    extension_init_cpu_ms: Summary  # the environment's count (cgroup): the extension's CPU
    # from its launch (launcher included) to the end of the init phase (every /next, the
    # runtime's too), librdkafka's threads included; on demand the extension assembles after
    # its own /next, so this includes what it did while the runtime still initialized

    @property
    def first_ratio(self) -> float:
        """kafka-relay ÷ in-handler, medians of environment start → first return."""
        return self.relay.first_ms.median / max(self.in_handler.first_ms.median, 1e-9)


class _Samples:
    def __init__(self) -> None:
        self.first: list[float] = []
        self.cpu: list[float] = []
        self.init: list[float] = []

    def summary(self) -> FirstReturn:
        return FirstReturn(Summary.of(self.first), Summary.of(self.cpu), Summary.of(self.init))


def _cold_start(sb: Sandbox, samples: _Samples, event: dict[str, object], want: str) -> float:
    """One start and first invocation; the extensions' CPU during init."""
    init_ms = sb.start()
    init_cpu_ms = sb.init_cpu.total_ms
    result = sb.invoke(event)
    reply = result.payload if isinstance(result.payload, dict) else {}
    if result.status != "success" or reply.get(want) != event["count"]:
        raise BenchError(f"cold start: the first invocation did not hand over or deliver "
                         f"every record ({result.status}: {reply or result.error}); "
                         f"see {sb.log_path}")
    samples.first.append(init_ms + result.caller_ms)
    samples.cpu.append(init_cpu_ms + result.cpu_ms)
    samples.init.append(init_ms)
    return sb.init_cpu.extensions_ms


def run_init(*, net: Network, layers: Layers, memory_mb: int, rtt_ms: float, samples: int,
             records: int, record_bytes: int, workdir: Path) -> InitResult:
    net.set_rtt(rtt_ms)
    topic = net.create_topic(f"init-{memory_mb}mb-{rtt_ms:g}ms")
    relay, in_handler = _Samples(), _Samples()
    ready: list[float] = []
    kernel: list[float] = []
    ready_cpu: list[float] = []
    extension_cpu: list[float] = []
    with sandbox(net=net, layer=layers.relay, handler="relay_send", topic=topic,
                 workdir=workdir, name=f"init-relay-{memory_mb}",
                 memory_mb=memory_mb) as relay_sb, \
         sandbox(net=net, layer=layers.client_only, handler="global_producer", topic=topic,
                 workdir=workdir, name=f"init-producer-{memory_mb}", memory_mb=memory_mb,
                 env=PRODUCER_AT_INIT) as producer_sb:

        def relay_start(event: dict[str, object]) -> None:
            mark = len(relay_sb.log_lines())
            launched = time.time()
            extension_cpu.append(_cold_start(relay_sb, relay, event, "accepted"))
            line = events_named(relay_sb.log_lines()[mark:], "init.ready")
            if not line:
                raise BenchError(f"init: no init.ready line from the extension; "
                                 f"see {relay_sb.log_path}")
            ready.append((line[0]["ts"] - launched) * 1000)
            kernel.append((line[0]["ts"] - process_start_epoch(extension_pid(relay_sb))) * 1000)
            if "cpu_ms" in line[0]:
                ready_cpu.append(float(line[0]["cpu_ms"]))
            relay_sb.shutdown("spindown")

        def producer_start(event: dict[str, object]) -> None:
            _cold_start(producer_sb, in_handler, event, "delivered")
            producer_sb.shutdown("spindown")

        run = uuid.uuid4().hex[:8]
        order: tuple[Callable[[dict[str, object]], None], ...] = (relay_start, producer_start)
        for n in range(samples):
            for start in order if n % 2 == 0 else order[::-1]:
                start({"run": f"{run}-{n}", "n": 0, "count": records, "size": record_bytes})
    return InitResult(memory_mb=memory_mb, rtt_ms=rtt_ms, records=records,
                      relay=relay.summary(), in_handler=in_handler.summary(),
                      ready_ms=Summary.of(ready), kernel_ready_ms=Summary.of(kernel),
                      ready_cpu_ms=Summary.of(ready_cpu) if ready_cpu else None,
                      extension_init_cpu_ms=Summary.of(extension_cpu))
