"""The listener adapter on a real engine: a SHUTDOWN drain that raises still spills everything."""

from __future__ import annotations

import time
from pathlib import Path

from devtools.kafka_broker import free_port
from kafka_relay.config import FlushStrategy
from kafka_relay.spill.codec import parse_spill_lines
from tests.relay_harness import running_relay


def test_a_drain_that_raises_at_shutdown_still_spills_every_pending_record(
    tmp_path: Path,
) -> None:
    unreachable = f"127.0.0.1:{free_port()}"  # nothing is delivered: all stays pending
    with running_relay(unreachable, tmp_path, default_topic="t", init_probe_ms=100,
                       flush=FlushStrategy.parse("shutdown")) as h:
        ids = h.client.send([{"key": f"k{i}", "value": i} for i in range(50)]).ids

        def corrupt_spool() -> int:
            raise ValueError("corrupt spool file")

        h.parts.engine.restore_spool = corrupt_spool  # type: ignore[method-assign]
        assert h.loop.shutdown("spindown", int(time.time() * 1000) + 1_500) == 0
        (summary,) = h.log_events("shutdown.summary")
        failed = h.log_events("shutdown.step_failed")
        log = h.log_lines()
    assert [e["step"] for e in failed] == ["drain"]
    assert summary["failed_steps"] == ["drain"]
    assert summary["spilled_at_shutdown"] == 50
    assert summary["pending"] == summary["unaccounted"] == 0
    assert {r.id for r in parse_spill_lines(log).records} == set(ids)
