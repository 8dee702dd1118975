"""SHUTDOWN arithmetic in bytes, pure: how long spilling what is pending takes, how much of the
deadline the drain may use, and the back-pressure limits that keep every pending record
spillable within Lambda's SHUTDOWN budget and the function's memory, in the memory buffer and in
the outage spool on disk.

The rates are measured (docs/records.md, "SHUTDOWN is sized in bytes"): packed ``KAFKA_RELAY_SPILL``
lines written to a pipe, with a safety factor for a slow log reader and a loaded core.
"""

from typing import NamedTuple

from kafka_relay.config import EXTENSION_SHUTDOWN_MS, Config
from kafka_relay.delivery.ledger import Limits
from kafka_relay.delivery.overflow import SpoolLimits

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
# The outage spool costs more at SHUTDOWN: each parked batch is a file to open, read, decode
# and unlink before its lines are printed. Measured (docs/durability.md, spill_parked into a
# pipe on a loaded 2-core machine): 0.2-0.5 ms per file, ~8 us per record as from memory,
# 84-290 MB/s of file bytes in 50-record batches (memory: 110-480 MB/s); with a margin:
SPOOL_MS_PER_BATCH = 0.6
SPOOL_BYTES_PER_MS = 25_000  # half the rate assumed for memory (SPILL_BYTES_PER_MS)
SPOOL_DISK_SHARE = 0.5  # of the spool file system's free space at init, at most
_MIB = 1024 * 1024


def cpu_share(memory_mb: int) -> float:
    """The fraction of a vCPU a function of ``memory_mb`` gets (1 when unknown)."""
    return 1.0 if memory_mb <= 0 else min(1.0, memory_mb / FULL_VCPU_MEMORY_MB)


def spill_ms(records: int, nbytes: int, *, memory_mb: int = 0) -> float:
    """Time to spill ``records`` holding ``nbytes`` as log lines."""
    cpu_ms = records * SPILL_US_PER_RECORD / 1000 + nbytes / SPILL_BYTES_PER_MS
    return SPILL_BASE_MS + cpu_ms / cpu_share(memory_mb)


def spool_spill_ms(batches: int, records: int, nbytes: int, *, memory_mb: int = 0) -> float:
    """Time to read back and spill ``batches`` parked files of ``records`` and ``nbytes``
    (file bytes) as log lines (after the memory buffer: no fixed cost of its own)."""
    cpu_ms = (batches * SPOOL_MS_PER_BATCH + records * SPILL_US_PER_RECORD / 1000
              + nbytes / SPOOL_BYTES_PER_MS)
    return cpu_ms / cpu_share(memory_mb)


class DrainPlan(NamedTuple):
    flush_until_ms: int  # flush to Kafka until then (wall clock)
    s3_until_ms: int  # an S3 put still running then is abandoned for log lines


def drain_plan(*, deadline_ms: int, margin_ms: int, pending: int, pending_bytes: int,
               has_bucket: bool, memory_mb: int = 0,
               parked: tuple[int, int, int] = (0, 0, 0)) -> DrainPlan:
    """``parked``: the outage spool's (batches, records, file bytes), spilled last."""
    end = deadline_ms - margin_ms
    log_reserve = int(spill_ms(pending, pending_bytes, memory_mb=memory_mb)
                      + spool_spill_ms(*parked, memory_mb=memory_mb)) + 1
    s3_reserve = S3_RESERVE_MS if has_bucket else 0
    return DrainPlan(flush_until_ms=end - log_reserve - s3_reserve, s3_until_ms=end - log_reserve)


class BufferPlan(NamedTuple):
    limits: Limits
    safe: Limits  # what SHUTDOWN can spill (and memory can hold)
    over: tuple[str, ...]  # explicit settings above ``safe``
    spool: SpoolLimits  # the outage spool's (bytes 0: off)
    spool_safe: SpoolLimits  # what SHUTDOWN can read back from disk and spill

    @property
    def spool_over(self) -> bool:
        """An explicit ``KAFKA_RELAY_SPOOL_MAX_BYTES`` above what SHUTDOWN can spill."""
        return self.spool.bytes > self.spool_safe.bytes


def buffer_limits(config: Config, *, spool_free_bytes: int) -> BufferPlan:
    """Defaults that SHUTDOWN can always spill (at the function's CPU share). The spill window
    (the extensions' SHUTDOWN share less the margin, the spill's fixed cost and, with a
    bucket, the S3 reserve) goes half to the memory buffer and half to the outage spool, or
    all of it to memory when the spool is off. Memory: half its part for the per-record
    cost, half for the bytes, both capped by a share of the function's memory. The spool: a
    third each for batches, records and bytes at disk's rates, the bytes capped by
    ``SPOOL_DISK_SHARE`` of ``spool_free_bytes``. Explicit ``KAFKA_RELAY_MAX_BUFFER_*`` settings
    win (reported in ``over`` when larger); an explicit ``KAFKA_RELAY_SPOOL_MAX_BYTES`` is
    the spool's only bound (``spool_over`` when larger than what SHUTDOWN can spill)."""
    window_ms = max(1.0, EXTENSION_SHUTDOWN_MS - config.shutdown_margin_ms - SPILL_BASE_MS
                    - (S3_RESERVE_MS if config.spill_bucket else 0))
    cpu = cpu_share(config.function_memory_mb)
    spool_ms = window_ms / 2 * cpu
    third = spool_ms / 3
    batches = int(third / SPOOL_MS_PER_BATCH)
    spool_records = int(third * 1000 / SPILL_US_PER_RECORD)
    spool_bytes = min(int(third * SPOOL_BYTES_PER_MS), int(spool_free_bytes * SPOOL_DISK_SHARE))
    # No spool when SHUTDOWN could not spill even one batch of it.
    spool_safe = SpoolLimits(spool_bytes if batches and spool_records else 0, batches,
                             spool_records)
    explicit = config.spool_max_bytes
    spool = spool_safe if explicit is None else SpoolLimits(explicit)
    memory_ms = window_ms * cpu - (spool_ms if spool.bytes > 0 else 0)
    half = memory_ms / 2
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
    return BufferPlan(Limits(records, nbytes), safe, over, spool, spool_safe)
