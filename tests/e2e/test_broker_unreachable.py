"""A broker that does not answer is loud, in the local sandbox with the built layer.

Misconfigured (nothing listens at KAFKA_BOOTSTRAP_SERVERS) or down (a fault proxy cut in
front of a real broker): each invocation's ``invocation.done`` line says the broker is not
answering, and ``send(..., wait=True)`` fails at once with ``BrokerUnavailable`` naming it,
instead of waiting out the invocation. Records handed over without ``wait`` stay owned and
end spilled or delivered, counted exactly.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import free_port
from devtools.sandbox import InvokeResult, Sandbox
from devtools.sandbox.__main__ import main as sandbox_cli
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts, ProxiedBroker

FUNCTION = Path(__file__).resolve().parents[1] / "fixtures" / "any_function"
QUICK = {"KAFKA_RELAY_FLUSH_BUDGET_MS": "300", "KAFKA_PRODUCER_RECONNECT_BACKOFF_MAX_MS": "200"}
FAST_MS = 2_000  # the function's timeout is 10 s: a wait that ran it out would take ~10 s


def _sandbox(artifacts: Artifacts, bootstrap: str) -> Sandbox:
    return Sandbox(layers=[artifacts.layer], function=FUNCTION, handler="any_producer.handler",
                   env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": "orders",
                        "KAFKA_RELAY_PORT": str(free_port()), **QUICK},
                   function_name="unreachable-producer", timeout_s=10.0)


def _done(sandbox: Sandbox, result: InvokeResult) -> dict[str, Any]:
    (done,) = [e for e in events_named(sandbox.log_lines(), "invocation.done")
               if e.get("request_id") == result.request_id]
    return done


def _refused_fast(sandbox: Sandbox, run: str) -> InvokeResult:
    result = sandbox.invoke({"run": run, "count": 2, "wait": True})
    assert result.status == "error"
    assert result.error is not None
    assert result.error["errorType"] == "BrokerUnavailable", result.error
    assert result.caller_ms < FAST_MS, f"waited {result.caller_ms:.0f} ms"
    return result


def test_with_no_broker_each_invocation_says_so_and_a_wait_fails_at_once_naming_it(
    artifacts: Artifacts,
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    with _sandbox(artifacts, bootstrap) as sandbox:
        handed = sandbox.invoke({"run": "kept", "count": 3})
        first = _done(sandbox, handed)
        refused = _refused_fast(sandbox, "waited")
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()

    assert handed.status == "success", handed.error
    assert handed.payload["accepted"] == 3
    assert first["level"] == "WARNING"
    assert first["broker"] == "unreachable since init"
    assert first["broker_error"], "the line carries the broker's error"
    assert first["pending"] == 3
    assert refused.error is not None
    message = refused.error["errorMessage"]
    assert f"cannot reach Kafka at {bootstrap} (unreachable since init: " in message
    assert "nothing was accepted" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert len(events_named(lines, "handoff.wait_refused")) == 1
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["accepted"], summary["spilled"], summary["unaccounted"]) == (3, 3, 0)


def test_while_the_breaker_is_open_a_wait_fails_at_once_and_works_again_once_it_answers(
    artifacts: Artifacts, proxied_broker: ProxiedBroker,
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic("orders-breaker")
    with Sandbox(layers=[artifacts.layer], function=FUNCTION, handler="any_producer.handler",
                 env={"KAFKA_BOOTSTRAP_SERVERS": proxy.address, "KAFKA_TOPIC": topic,
                      "KAFKA_RELAY_PORT": str(free_port()), **QUICK},
                 function_name="breaker-producer", timeout_s=10.0) as sandbox:
        warm = sandbox.invoke({"run": "warm", "count": 2, "wait": True})
        proxy.cut()
        held = sandbox.invoke({"run": "held", "count": 2})
        refused = _refused_fast(sandbox, "refused")
        held_done = _done(sandbox, held)
        proxy.restore()
        deadline, back = time.monotonic() + 30, None
        while time.monotonic() < deadline:  # librdkafka reconnects within its backoff
            back = sandbox.invoke({"run": "back", "count": 2, "wait": True})
            if back.status == "success":
                break
            time.sleep(0.3)
        sandbox.shutdown("spindown")
        lines = sandbox.log_lines()

    assert warm.status == "success", warm.error
    assert held.status == "success", held.error
    assert held_done["broker"] == "breaker open"
    assert refused.error is not None
    assert "(breaker open: " in refused.error["errorMessage"]
    assert back is not None
    assert back.status == "success", back.error
    assert [o["outcome"] for o in back.payload["outcomes"]] == ["delivered", "delivered"]
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["accepted"], summary["delivered"], summary["unaccounted"]) == (6, 6, 0)
    on_topic = {r.headers["x-relay-id"].decode() for r in broker.read(topic, expected=6)}
    assert on_topic == {*warm.payload["ids"], *held.payload["ids"], *back.payload["ids"]}


@pytest.mark.parametrize("allow_spill", [False, True])
def test_the_sandbox_cli_ends_with_a_summary_and_fails_a_run_whose_records_did_not_arrive(
    artifacts: Artifacts, allow_spill: bool,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there

    code = sandbox_cli([
        "--layer", str(artifacts.layer), "--function", str(FUNCTION),
        "--handler", "any_producer.handler", "--event", '{"count": 2}', "--invocations", "2",
        "--env", f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}", "--env", "KAFKA_TOPIC=orders",
        "--env", f"KAFKA_RELAY_PORT={free_port()}",
        "--env", "KAFKA_RELAY_FLUSH_BUDGET_MS=300",
        *(["--allow-spill"] if allow_spill else []),
    ], out=out, err=err)

    lines = out.getvalue().splitlines()
    summary = lines[lines.index("--- summary ---") + 1:]
    assert summary[:2] == ["invocations: 2 ok, 0 failed",
                           "records: 4 accepted, 0 delivered, 0 dead-lettered, 4 spilled"]
    assert summary[2].startswith("errors: ")
    problems = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
    if allow_spill:
        assert (code, problems) == (0, [])
    else:
        assert code == 1
        assert problems[0].startswith("error: kafka-relay never reached the broker (")
        assert problems[1] == ("error: 4 records were spilled, not delivered (pass "
                               "--allow-spill when that is what this run tests)")
