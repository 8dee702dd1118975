"""The built layer in the sandbox's Lambda Managed Instances and SnapStart modes, real broker.

Managed instances: no INVOKE, concurrent invocations in several runtime workers, no
freeze: every record still arrives, each request gets its own ``invocation.done``
by request id, Kafka errors never end the extension, and SHUTDOWN drains.

SnapStart: nothing that restored copies must not share exists at the snapshot (no
broker connection, no producer), the producer and the x-relay-id prefix come after
the restore. Two copies of one snapshot cannot be run here (processes are not
checkpointed), so these tests prove the precondition for copies to be independent:
the snapshot holds no broker connection, and the producer and the id prefix used
for every record were made from state created after the restore began.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import free_port, read_topic
from devtools.sandbox import Sandbox
from kafka_relay.client import RelayClient
from kafka_relay.protocol import RelayError
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts, Broker, ProxiedBroker

FUNCTION = Path(__file__).resolve().parent.parent / "fixtures" / "any_function"


def _sandbox(artifacts: Artifacts, bootstrap: str, topic: str, *, mode: str,
             env: Mapping[str, str] | None = None, handler: str = "any_producer.handler",
             **options: Any) -> Sandbox:
    return Sandbox(
        layers=[artifacts.layer], function=FUNCTION, handler=handler,
        env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
             "KAFKA_RELAY_PORT": str(free_port()), **(env or {})},
        function_name="modes-producer", timeout_s=30.0, mode=mode, **options,
    )


def _summary(lines: list[str]) -> dict[str, Any]:
    (summary,) = events_named(lines, "shutdown.summary")
    return summary


def _reported(sandbox: Sandbox, requests: int, *, within_s: float) -> list[dict[str, Any]]:
    """The ``invocation.done`` lines once there are ``requests`` of them (or the time is up)."""
    deadline = time.monotonic() + within_s
    while (len(events_named(sandbox.log_lines(), "invocation.done")) < requests
           and time.monotonic() < deadline):
        time.sleep(0.1)
    return events_named(sandbox.log_lines(), "invocation.done")


def _relay_errors(lines: list[str]) -> list[str]:
    """librdkafka lines that would show a shared producer identity."""
    words = ("FENCED", "DUPLICATE_SEQUENCE", "OUT_OF_ORDER_SEQUENCE", "UNKNOWN_PRODUCER")
    return [line for line in lines if any(word in line for word in words)]


# -- Lambda Managed Instances ----------------------------------------------------------------


def test_managed_instances_deliver_concurrent_handlers_records_and_account_each_request(
    artifacts: Artifacts, broker: Broker
) -> None:
    topic = broker.create_topic()
    invocations, count = 200, 10
    with _sandbox(artifacts, broker.bootstrap, topic, mode="managed-instances",
                  max_concurrency=8, runtime_processes=4) as sandbox:
        results = sandbox.invoke_many(
            [{"run": f"run{n}", "count": count} for n in range(invocations)], concurrency=8)
        # Before any SHUTDOWN: delivered in the background, each request reported.
        got = broker.read(topic, expected=invocations * count, timeout=30)
        reported_before_shutdown = len(_reported(sandbox, invocations, within_s=30))
        # The default transport: one ring per handler process, all in the shared /tmp.
        assert sandbox._tmp_dir is not None  # the sandbox's /tmp
        ring_dir = sandbox._tmp_dir / "kafka-relay-ring"
        rings_while_running = len(list(ring_dir.glob("kafka-relay-ring-*.ring")))
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
        subscriptions = sandbox.telemetry_subscriptions()
        rings_after = list(ring_dir.glob("kafka-relay-ring-*.ring"))

    assert rings_while_running == 4
    # Consumed, their writers killed before SHUTDOWN: deleted by its drain.
    assert rings_after == []

    assert [r.status for r in results] == ["success"] * invocations
    assert shutdown.killed == []
    assert shutdown.exit_codes == {"kafka-relay": 0}
    # Registered for SHUTDOWN only: never refused, never got an INVOKE.
    assert any(line.startswith("EXTENSION\tName: kafka-relay\tState: Ready\tEvents: [SHUTDOWN]")
               for line in lines)
    assert not any("RegistrationRefused" in line for line in lines)
    assert events_named(lines, "lifecycle.invoke_ignored") == []
    assert [s["schemaVersion"] for s in subscriptions] == ["2025-01-29"]
    summary = _summary(lines)
    total = invocations * count
    assert (summary["accepted"], summary["delivered"]) == (total, total)
    assert (summary["pending"], summary["unaccounted"], summary["producers_built"]) == (0, 0, 1)
    ids = [i for r in results for i in r.payload["ids"]]
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(ids)
    # One invocation.done per request id, each with its own ten records, all delivered,
    # logged by the background ticker (no INVOKE, before SHUTDOWN).
    assert reported_before_shutdown == invocations
    done = {e["request_id"]: e for e in events_named(lines, "invocation.done")}
    assert set(done) == {r.request_id for r in results}
    assert {(e["accepted"], e["delivered"], e["pending"]) for e in done.values()} == {
        (count, count, 0)}


def test_managed_instances_report_a_request_without_the_end_call_when_platform_report_comes(
    artifacts: Artifacts, broker: Broker
) -> None:
    topic = broker.create_topic()
    invocations, count = 4, 5
    with _sandbox(artifacts, broker.bootstrap, topic, mode="managed-instances",
                  max_concurrency=2,
                  handler="any_producer.handler_naming_its_request_without_end_call") as sandbox:
        results = sandbox.invoke_many(
            [{"run": f"run{n}", "count": count} for n in range(invocations)], concurrency=2)
        # Within seconds of each platform.report, not after the ~16 min a request that never
        # says it ended waits (accounting.STALE_AFTER_S).
        done = _reported(sandbox, invocations, within_s=10)
        shutdown = sandbox.shutdown("spindown")

    assert [r.status for r in results] == ["success"] * invocations
    assert shutdown.exit_codes == {"kafka-relay": 0}
    assert sorted(e["request_id"] for e in done) == sorted(r.request_id for r in results)
    assert {(e["accepted"], e["delivered"], e["pending"], e["ended"]) for e in done} == {
        (count, count, 0, True)}


def test_managed_instances_survive_a_broker_outage_and_resend_the_spool_without_invoke(
    artifacts: Artifacts, proxied_broker: ProxiedBroker
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    dlq = broker.create_topic(f"dlq.{topic}")
    env = {"KAFKA_RELAY_MAX_ATTEMPTS": "1", "KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS": "1000",
           "KAFKA_RELAY_RETRY_BACKOFF_MS": "100", "KAFKA_PRODUCER_RECONNECT_BACKOFF_MAX_MS": "200"}
    with _sandbox(artifacts, proxy.address, topic, mode="managed-instances", env=env,
                  max_concurrency=4, runtime_processes=2) as sandbox:
        sandbox.start()
        pids = sandbox.pids()
        proxy.cut()
        during = sandbox.invoke_many([{"run": f"out{n}", "count": 5} for n in range(4)])
        # One attempt timed out, so did the DLQ: the records wait in the /tmp spool.
        deadline = time.monotonic() + 30
        while (sum(e["records"] for e in events_named(sandbox.log_lines(), "spill.spool")) < 20
               and time.monotonic() < deadline):
            time.sleep(0.2)
        proxy.restore()
        # No invocation comes: the background ticker brings the spool back (every 5 s, so
        # one restore may fall inside the outage and park the records again) and the
        # records reach the DLQ before any SHUTDOWN.
        ids = {i for r in during for i in r.payload["ids"]}
        on_dlq = {r.headers["x-relay-id"].decode()
                  for r in read_topic(broker.bootstrap, dlq, ids=ids, timeout=60, idle=60)}
        after = sandbox.invoke_many([{"run": "after", "count": 5}])
        same_environment = set(pids) <= set(sandbox.pids())
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()

    assert [r.status for r in during + after] == ["success"] * 5
    assert same_environment  # a Kafka error never ended the extension
    assert shutdown.exit_codes == {"kafka-relay": 0}
    summary = _summary(lines)
    assert summary["spooled"] == summary["restored"] >= 20
    # Each restore is logged once: the lines add up to the count exactly.
    assert sum(e["records"] for e in events_named(lines, "spool.restored")) == summary["restored"]
    assert (summary["accepted"], summary["pending"], summary["unaccounted"]) == (25, 0, 0)
    assert summary["delivered"] + summary["dead_lettered"] == 25
    assert on_dlq == ids  # gave up after 1 attempt, then dead-lettered from the spool


# -- SnapStart ---------------------------------------------------------------------------------


def test_snap_start_builds_the_producer_after_the_restore_and_delivers(
    artifacts: Artifacts, proxied_broker: ProxiedBroker
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    port = free_port()
    with _sandbox(artifacts, proxy.address, topic, mode="snap-start",
                  env={"KAFKA_RELAY_PORT": str(port)}) as sandbox:
        sandbox.start()
        snapshot = sandbox.snapshot_report()
        assert snapshot is not None
        proxy.cut()  # a restored copy runs elsewhere: whatever was open is gone
        proxy.restore()
        restored = sandbox.restore()
        sandbox.wait_for_log(r'"event":"snapstart.restored"')
        # No AWS_SESSION_TOKEN under SnapStart: the handoff still wants a token (the
        # container credentials' one, which the function's client sends).
        with pytest.raises(RelayError, match="refused this client's token"):
            RelayClient(env={}, port=port, timeout_s=5).status()
        results = [sandbox.invoke({"run": f"run{n}", "count": 20}) for n in range(3)]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()

    assert snapshot.connections_to(proxy.port) == []  # no broker connection in the snapshot
    assert restored.status == "success"
    assert [r.status for r in results] == ["success"] * 3
    (ready,) = events_named(lines[:snapshot.log_index], "init.ready")
    assert ready["mode"] == "snap-start"
    assert events_named(lines[:snapshot.log_index], "snapstart.restored") == []
    (after,) = events_named(lines, "snapstart.restored")
    assert after["trigger"] == "telemetry"  # platform.restoreStart came before the invoke
    assert after["init_id_prefix"] == ready["init_id_prefix"]
    assert after["id_prefix"] != ready["init_id_prefix"]
    assert shutdown.exit_codes == {"kafka-relay": 0}
    summary = _summary(lines)
    assert (summary["accepted"], summary["delivered"], summary["unaccounted"]) == (60, 60, 0)
    assert summary["producers_built"] == 1
    got = broker.read(topic, expected=60)
    ids = {i for r in results for i in r.payload["ids"]}
    assert {r.headers["x-relay-id"].decode() for r in got} == ids
    # Handed over through the handler's ring (the default transport), made after the
    # restore: its ids carry the ring's tag, drawn then, not anything from before the snapshot.
    (tag,) = {i.split("-")[0] for i in ids}
    assert len(tag) == 16
    assert tag not in (ready["init_id_prefix"], after["id_prefix"])
    assert _relay_errors(lines) == []


def test_snap_start_hidden_from_the_extension_is_told_by_its_credentials_and_restores(
    artifacts: Artifacts, broker: Broker
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker.bootstrap, topic, mode="snap-start",
                  hide_init_type=True) as sandbox:
        sandbox.start()
        snapshot = sandbox.snapshot_report()
        assert snapshot is not None
        sandbox.restore()
        sandbox.wait_for_log(r'"event":"snapstart.restored"')
        results = [sandbox.invoke({"run": f"run{n}", "count": 10}) for n in range(2)]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()

    assert [r.status for r in results] == ["success"] * 2
    (ready,) = events_named(lines[:snapshot.log_index], "init.ready")
    assert ready["mode"] == "snap-start"  # container credentials, no static keys
    (after,) = events_named(lines, "snapstart.restored")
    assert after["trigger"] == "telemetry"
    assert after["id_prefix"] != ready["init_id_prefix"]
    ids = {i for r in results for i in r.payload["ids"]}
    assert {r.headers["x-relay-id"].decode() for r in broker.read(topic, expected=20)} == ids
    (tag,) = {i.split("-")[0] for i in ids}  # the tag of a ring made after the restore
    assert tag != ready["init_id_prefix"]
    assert shutdown.exit_codes == {"kafka-relay": 0}
    assert _summary(lines)["producers_built"] == 1


def test_snap_start_without_telemetry_restores_on_the_first_invoke(
    artifacts: Artifacts, broker: Broker
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker.bootstrap, topic, mode="snap-start",
                  env={"KAFKA_RELAY_TELEMETRY": "false"}) as sandbox:
        result = sandbox.invoke({"run": "first", "count": 10})
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()

    assert result.status == "success", result.error
    (after,) = events_named(lines, "snapstart.restored")
    assert after["trigger"] == "invoke"
    assert shutdown.exit_codes == {"kafka-relay": 0}
    assert {r.headers["x-relay-id"].decode() for r in broker.read(topic, expected=10)} == set(
        result.payload["ids"])
    assert _summary(lines)["unaccounted"] == 0
