"""Everything one bench run measured (filled in by the runners, read by targets and report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.coldstart import InitResult
from bench.extension import DrainResult, HandoffResult
from bench.invocations import ScenarioResult, Skipped
from bench.outage import OutageResult


@dataclass
class BenchResults:
    options: dict[str, Any]
    invocations: list[ScenarioResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unaccounted: int = 0  # the extensions' shutdown.summary, all invocation environments
    handoff: list[HandoffResult] = field(default_factory=list)
    init: list[InitResult] = field(default_factory=list)
    drain: DrainResult | None = None
    outage: OutageResult | None = None
    layer_sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def scenario(self, name: str, memory_mb: int, rtt_ms: float) -> ScenarioResult | None:
        return next((r for r in self.invocations
                     if (r.name, r.memory_mb, r.rtt_ms) == (name, memory_mb, rtt_ms)), None)

    def skipped_reason(self, name: str) -> str | None:
        return next((s.reason for s in self.skipped if s.name == name), None)

    def handoff_at(self, memory_mb: int) -> HandoffResult | None:
        return next((h for h in self.handoff if h.memory_mb == memory_mb), None)
