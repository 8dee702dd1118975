"""Measurements of the extension itself, each in the sandbox with the real built layer:
handoff throughput and memory, and the SHUTDOWN drain (init: ``coldstart``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.infra import (
    BenchError,
    Layers,
    Network,
    extension_pid,
    memory_kb,
    sandbox,
)
from bench.stats import Summary
from devtools.sandbox import InvokeResult, Sandbox
from kafka_relay.tools.table import events_named

Progress = Callable[[str], None]


def _payload(result: InvokeResult, what: str, sb: Sandbox) -> dict[str, Any]:
    if result.status != "success" or not isinstance(result.payload, dict):
        raise BenchError(f"{what}: the invocation failed ({result.status}: {result.error}); "
                         f"see {sb.log_path}")
    return result.payload


# -- handoff throughput and memory -----------------------------------------------------------


@dataclass(frozen=True)
class HandoffResult:
    memory_mb: int
    rtt_ms: float
    batch_records: int
    record_bytes: int
    records_per_invocation: int
    invocations: int
    handoff_rps: Summary  # records answered 202 per second, client side
    e2e_rps: Summary  # records delivered per second, the final flush included
    records_total: int
    lost: int
    rss_idle_kb: int  # after init and one small invocation
    rss_after_kb: int  # after every invocation (records_total records)
    hwm_kb: int  # the extension's peak resident memory


def run_handoff(
    *,
    net: Network,
    layers: Layers,
    memory_mb: int,
    rtt_ms: float,
    invocations: int,
    batches: int,
    batch_records: int = 500,
    record_bytes: int = 300,
    workdir: Path,
    progress: Progress,
) -> HandoffResult:
    """Each invocation hands ``batches`` x ``batch_records`` records over as fast as the
    client goes, then flushes until all are delivered; the handler times both."""
    net.set_rtt(rtt_ms)
    topic = net.create_topic(f"handoff-{rtt_ms:g}ms")
    run_ids: list[str] = []
    handoff: list[float] = []
    e2e: list[float] = []
    with sandbox(net=net, layer=layers.relay, handler="relay_throughput", topic=topic,
                 workdir=workdir, name=f"handoff-{memory_mb}mb-{rtt_ms:g}ms", timeout_s=120.0,
                 memory_mb=memory_mb) as sb:
        sb.start()

        def invoke(count: int) -> dict[str, Any]:
            run_ids.append(uuid.uuid4().hex[:8])
            event = {"run": run_ids[-1], "batches": count, "count": batch_records,
                     "size": record_bytes}
            return _payload(sb.invoke(event), "handoff throughput", sb)

        invoke(1)  # warm: the producer's id and connections, the client's connection
        pid = extension_pid(sb)
        idle = memory_kb(pid)
        for n in range(invocations):
            reply = invoke(batches)
            if reply["remaining"]:
                raise BenchError(f"handoff throughput: {reply['remaining']} records still "
                                 f"pending after the flush; see {sb.log_path}")
            handoff.append(reply["handoff_rps"])
            e2e.append(reply["e2e_rps"])
            progress(f"  handoff {n + 1}/{invocations} at {memory_mb} MB, {rtt_ms:g} ms RTT: "
                     f"{reply['handoff_rps']:,.0f} records/s handed over, "
                     f"{reply['e2e_rps']:,.0f} delivered")
        after = memory_kb(pid)
    net.set_rtt(0)
    keys = [f"{run}-{b}-{i}" for run in run_ids[1:] for b in range(batches)
            for i in range(batch_records)]
    delivery = net.delivery(topic, keys, timeout=60 + len(keys) / 5000)
    return HandoffResult(
        memory_mb=memory_mb, rtt_ms=rtt_ms, batch_records=batch_records, record_bytes=record_bytes,
        records_per_invocation=batches * batch_records, invocations=invocations,
        handoff_rps=Summary.of(handoff), e2e_rps=Summary.of(e2e), records_total=len(keys),
        lost=delivery.lost, rss_idle_kb=idle["VmRSS"], rss_after_kb=after["VmRSS"],
        hwm_kb=after["VmHWM"],
    )


# -- SHUTDOWN drain --------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainSample:
    shutdown_ms: float  # SHUTDOWN sent -> the extension exited (the sandbox's clock)
    extension_ms: float  # the extension's own shutdown.summary duration
    pending_at_freeze: int  # not yet delivered as the handler returned
    drained: int
    delivered: int
    spilled: int
    unaccounted: int
    killed: bool
    # The extension's resident memory grown while the records were held pending, per byte of
    # them (keys, values and headers): what the buffer costs beyond the payload itself.
    memory_per_pending_byte: float


@dataclass(frozen=True)
class DrainResult:
    memory_mb: int
    rtt_ms: float
    records: int
    samples: list[DrainSample]
    shutdown_ms: Summary
    lost: int  # expected on the topic and missing (spilled records count as lost here)


def _per_byte(grown_kb: int, pending_bytes: int) -> float:
    return grown_kb * 1024 / pending_bytes if pending_bytes else 0.0


def run_drain(
    *, net: Network, layers: Layers, memory_mb: int, rtt_ms: float, records: int, samples: int,
    workdir: Path,
) -> DrainResult:
    """Flush strategy ``shutdown``: one invocation hands ``records`` over and the environment
    freezes with them pending; then SHUTDOWN must deliver them within Lambda's 2 s.

    The proxy holds the broker's traffic during the invocation, so all of them are still
    pending at the freeze (unheld, the extension's background producing delivers most of
    them while the handler runs); it lets go before SHUTDOWN."""
    net.set_rtt(rtt_ms)
    topic = net.create_topic(f"drain-{rtt_ms:g}ms")
    run_ids: list[str] = []
    results: list[DrainSample] = []
    with sandbox(net=net, layer=layers.relay, handler="relay_send", topic=topic,
                 workdir=workdir, name=f"drain-{rtt_ms:g}ms", memory_mb=memory_mb,
                 env={"KAFKA_RELAY_FLUSH": "shutdown"}) as sb:
        for _ in range(samples):
            sb.start()
            mark = len(sb.log_lines())
            run_ids.append(uuid.uuid4().hex[:8])
            pid = extension_pid(sb)
            idle_kb = memory_kb(pid)["VmRSS"]
            net.hold()
            try:
                reply = _payload(sb.invoke({"run": run_ids[-1], "n": 0, "count": records,
                                            "size": 1024, "status": True}), "drain", sb)
                held_kb = memory_kb(pid)["VmRSS"]  # frozen, the records still pending
            finally:
                net.release()
            if reply.get("accepted") != records:
                raise BenchError(f"drain: the extension accepted {reply.get('accepted')} of "
                                 f"{records} records; see {sb.log_path}")
            shutdown = sb.shutdown("spindown")
            lines = sb.log_lines()[mark:]
            summaries = events_named(lines, "shutdown.summary")
            if not summaries:
                raise BenchError(f"drain: the extension logged no shutdown.summary (killed: "
                                 f"{shutdown.killed}); see {sb.log_path}")
            summary = summaries[-1]
            results.append(DrainSample(
                shutdown_ms=shutdown.duration_ms, extension_ms=float(summary["duration_ms"]),
                pending_at_freeze=int(reply["status"]["pending"]),
                drained=int(summary["drained"]),
                delivered=int(summary["delivered"]), spilled=int(summary["spilled"]),
                unaccounted=int(summary["unaccounted"]), killed=bool(shutdown.killed),
                memory_per_pending_byte=_per_byte(held_kb - idle_kb,
                                                  int(reply["status"]["pending_bytes"]))))
    net.set_rtt(0)
    keys = [f"{run}-0-{i}" for run in run_ids for i in range(records)]
    delivery = net.delivery(topic, keys, timeout=30 + len(keys) / 5000)
    return DrainResult(memory_mb=memory_mb, rtt_ms=rtt_ms, records=records, samples=results,
                       shutdown_ms=Summary.of([s.shutdown_ms for s in results]),
                       lost=delivery.lost)
