"""SHUTDOWN arithmetic in bytes, pure: how long spilling what is pending takes, how much of the
deadline the drain may use, and the back-pressure limits that keep every pending record
spillable within Lambda's SHUTDOWN budget and the function's memory.

The rates are measured (docs/records.md, "SHUTDOWN is sized in bytes"): packed ``KAFKA_RELAY_SPILL``
lines written to a pipe, with a safety factor for a slow log reader and a loaded core.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka_relay.config import EXTENSION_SHUTDOWN_MS, Config
from kafka_relay.delivery.ledger import Limits

SPILL_BASE_MS = 100  # fixed cost of a spill (the summary, a slow first write)
# Spill cost on one vCPU, from the measurement in docs/records.md: ~8 us per record plus ~100 MB/s
# of record bytes on a loaded 2-core machine; these leave a margin on top.
SPILL_US_PER_RECORD = 15.0
SPILL_BYTES_PER_MS = 50_000
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB.
FULL_VCPU_MEMORY_MB = 1_769
S3_RESERVE_MS = 500  # an S3 put before the log lines, abandoned at its deadline
MEMORY_SHARE = 0.25  # of the function's memory, for records waiting for Kafka
MEMORY_PER_PENDING_BYTE = 1.8  # resident bytes per record byte held (RSS: 1.79x at 1 KB)
MEMORY_PER_RECORD = 500  # resident bytes per pending record beyond its bytes (measured ~400)
_MIB = 1024 * 1024


def cpu_share(memory_mb: int) -> float:
    """The fraction of a vCPU a function of ``memory_mb`` gets (1 when unknown)."""
    return 1.0 if memory_mb <= 0 else min(1.0, memory_mb / FULL_VCPU_MEMORY_MB)


def spill_ms(records: int, nbytes: int, *, memory_mb: int = 0) -> float:
    """Time to spill ``records`` holding ``nbytes`` as log lines."""
    cpu_ms = records * SPILL_US_PER_RECORD / 1000 + nbytes / SPILL_BYTES_PER_MS
    return SPILL_BASE_MS + cpu_ms / cpu_share(memory_mb)


@dataclass(frozen=True)
class DrainPlan:
    flush_until_ms: int  # flush to Kafka until then (wall clock)
    s3_until_ms: int  # an S3 put still running then is abandoned for log lines


def drain_plan(*, deadline_ms: int, margin_ms: int, pending: int, pending_bytes: int,
               has_bucket: bool, memory_mb: int = 0) -> DrainPlan:
    end = deadline_ms - margin_ms
    log_reserve = int(spill_ms(pending, pending_bytes, memory_mb=memory_mb)) + 1
    s3_reserve = S3_RESERVE_MS if has_bucket else 0
    return DrainPlan(flush_until_ms=end - log_reserve - s3_reserve, s3_until_ms=end - log_reserve)


@dataclass(frozen=True)
class BufferPlan:
    limits: Limits
    safe: Limits  # what SHUTDOWN can spill (and memory can hold)
    over: tuple[str, ...]  # explicit settings above ``safe``


def buffer_limits(config: Config) -> BufferPlan:
    """Defaults that SHUTDOWN can always spill (at the function's CPU share): half the spill
    window for the per-record cost, half for the bytes, both capped by a share of the
    function's memory. Explicit
    ``KAFKA_RELAY_MAX_BUFFER_*`` settings win (reported in ``over`` when larger)."""
    window_ms = (EXTENSION_SHUTDOWN_MS - config.shutdown_margin_ms - SPILL_BASE_MS
                 - (S3_RESERVE_MS if config.spill_bucket else 0))
    half = max(1.0, window_ms / 2) * cpu_share(config.function_memory_mb)
    safe_records = int(half * 1000 / SPILL_US_PER_RECORD)
    safe_bytes = int(half * SPILL_BYTES_PER_MS)
    if config.function_memory_mb > 0:
        share = config.function_memory_mb * _MIB * MEMORY_SHARE
        safe_bytes = min(safe_bytes, int(share / MEMORY_PER_PENDING_BYTE))
        safe_records = min(safe_records, int(share / MEMORY_PER_RECORD))
    safe = Limits(max(1, safe_records), max(1, safe_bytes))
    records = config.max_buffer_records or safe.records
    nbytes = config.max_buffer_bytes or safe.bytes
    over = tuple(name for name, given, ok in (
        ("KAFKA_RELAY_MAX_BUFFER_RECORDS", records, safe.records),
        ("KAFKA_RELAY_MAX_BUFFER_BYTES", nbytes, safe.bytes)) if given > ok)
    return BufferPlan(Limits(records, nbytes), safe, over)
