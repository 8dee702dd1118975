"""What a sandbox run came to, from its invocations and the log stream: the CLI's last lines.

A run "looks fine" only when the records arrived: a function whose every invocation
succeeded while kafka-relay spilled what it was given (or never reached the broker) is a
misconfiguration, so the CLI exits non-zero for it unless told that spilling is expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from devtools.sandbox.sandbox import InvokeResult
from kafka_relay.tools.table import events_named, json_in_line

_COUNTS = ("accepted", "delivered", "dead_lettered", "spilled")


@dataclass(frozen=True)
class RunSummary:
    ok: int
    failed: int
    counts: dict[str, int] | None  # kafka-relay's shutdown.summary; None without one
    broker_unreachable: str | None  # the init probe's error, when no record was delivered
    errors: list[str] = field(default_factory=list)  # "event: error" of ERROR lines

    def lines(self) -> list[str]:
        relay = ("no kafka-relay shutdown.summary in the log (layer not attached, or it "
                 "did not shut down)" if self.counts is None else
                 ", ".join(f"{self.counts[k]} {k.replace('_', '-')}" for k in _COUNTS))
        errors = f"{len(self.errors)} (first: {self.errors[0]})" if self.errors else "none"
        return [f"invocations: {self.ok} ok, {self.failed} failed",
                f"records: {relay}", f"errors: {errors}"]

    def problems(self, *, allow_spill: bool) -> list[str]:
        """Why the run should not pass: spilled records, a broker never reached (both
        expected with ``allow_spill``: a run that tests the spill path)."""
        found: list[str] = []
        if allow_spill:
            return found
        if self.broker_unreachable is not None:
            found.append(f"kafka-relay never reached the broker ({self.broker_unreachable}): "
                         "check KAFKA_BOOTSTRAP_SERVERS (or pass --with-broker for a local one)")
        if self.counts is not None and self.counts["spilled"]:
            found.append(f"{self.counts['spilled']} records were spilled, not delivered "
                         "(pass --allow-spill when that is what this run tests)")
        return found


def summarize(results: Sequence[InvokeResult], lines: Sequence[str]) -> RunSummary:
    failed = sum(1 for r in results if r.status != "success")
    summaries = events_named(lines, "shutdown.summary")
    counts = ({k: sum(int(s.get(k) or 0) for s in summaries) for k in _COUNTS}
              if summaries else None)
    unreachable = events_named(lines, "init.broker_unreachable")
    delivered = any(int(e.get("delivered") or 0) for e in events_named(lines, "invocation.done"))
    reached = delivered or bool(counts and counts["delivered"])
    errors = [f"{e.get('event')}: {e.get('error', '')}".rstrip(": ")
              for e in (json_in_line(line) for line in lines if '"ERROR"' in line)
              if e is not None and e.get("level") == "ERROR"]
    return RunSummary(ok=len(results) - failed, failed=failed, counts=counts,
                      broker_unreachable=(str(unreachable[0].get("error"))
                                          if unreachable and not reached else None),
                      errors=errors)

