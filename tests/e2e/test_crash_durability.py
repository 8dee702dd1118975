"""Process death in the local Lambda sandbox with the built layer: the extension is SIGKILLed
mid-invocation while the broker is paused, Lambda resets the environment (keeping /tmp),
and the next environment's extension restores the journal and delivers every accepted id."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from devtools.sandbox import Sandbox
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts, ProxiedBroker
from tests.e2e.test_faults import (
    _assert_clean_exit,
    _extension_pid,
    _invoke,
    _read_all,
    _sandbox,
)

STRANDED = 2_000


def _kill_once_handed_over(sandbox: Sandbox, killed: list[int]) -> None:
    """SIGKILL the extension as soon as it owns the batch (answered 202), mid-invocation."""
    sandbox.wait_for_log(rf'handler\.handed_over.*"accepted": {STRANDED}', timeout=30)
    pid = _extension_pid(sandbox)
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def test_records_of_an_extension_killed_mid_invocation_are_delivered_after_the_reset(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    records = [{"key": f"doomed-{i}", "value": {"i": i, "pad": "x" * 200}}
               for i in range(STRANDED)]
    with _sandbox(artifacts, proxy.address, topic, {"KAFKA_RELAY_FLUSH_BUDGET_MS": "5000",
                                                       "KAFKA_RELAY_JOURNAL": "on"},
                  handler="any_producer.handler_relaying_event_records",
                  log_path=tmp_path / "sandbox.log") as sandbox:
        sent = _invoke(sandbox, {"records": [{"key": "warm", "value": 0}]}).payload["ids"]
        proxy.pause()  # the broker stops answering: the batch stays pending
        killed: list[int] = []
        killer = threading.Thread(target=_kill_once_handed_over, args=(sandbox, killed),
                                  daemon=True)
        killer.start()
        crashed = sandbox.invoke({"records": records})
        killer.join(timeout=30)
        assert killed, "the extension was never killed"
        assert crashed.reset is not None, "an extension crash resets the environment"
        assert crashed.reset.exit_codes == {"kafka-relay": -signal.SIGKILL}
        (handed,) = [e for e in events_named(sandbox.log_lines(), "handler.handed_over")
                     if e["accepted"] == STRANDED]
        sent += handed["ids"]

        proxy.resume()
        after = _invoke(sandbox, {"records": [{"key": f"after-{i}", "value": i}
                                              for i in range(5)], "wait": True})
        assert [o["outcome"] for o in after.payload["outcomes"]] == ["delivered"] * 5
        assert after.init_ms is not None, "the invoke after the reset ran a new init"
        sent += after.payload["ids"]
        assert _extension_pid(sandbox) != killed[0]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    (restored,) = events_named(lines, "journal.restored")
    assert restored["records"] == STRANDED
    summary = events_named(lines, "shutdown.summary")[-1]
    assert (summary["restored"], summary["accepted"]) == (STRANDED, 5)
    assert (summary["delivered"], summary["pending"], summary["unaccounted"]) == (
        STRANDED + 5, 0, 0)
    on_topic = {r.headers["x-relay-id"].decode() for r in _read_all(broker, topic)}
    assert on_topic == set(sent), "every id answered 202 is on the topic: 0 lost"
