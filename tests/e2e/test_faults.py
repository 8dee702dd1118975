"""Fault injection with the built layer in the local Lambda sandbox.

The proof that every record the extension accepted ends delivered, dead-lettered or
spilled: each case counts records in (the ids the extension handed out) and out (the
extension's ``shutdown.summary``, whose ``unaccounted`` must be 0, and what is on the
topics, by ``x-relay-id``). Outages are a fault proxy in front of a dedicated broker;
between invocations the environment is frozen (SIGSTOP), as in Lambda.

The long variants are ``slow`` (``./build.sh faults`` runs them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import ConsumedRecord, free_port, read_topic
from devtools.moto_server import MotoServer
from devtools.sandbox import InvokeResult, Sandbox, ShutdownResult
from devtools.sandbox.environment import process_state
from devtools.saslproxy import DEFAULT_PASSWORD, DEFAULT_USERNAME, sasl_broker
from kafka_relay.spill.codec import parse_spill_lines
from kafka_relay.tools.table import LogLine, LogParser, View, events_named, json_in_line, summarise
from tests.conftest import Artifacts, Broker, ProxiedBroker
from tests.e2e.refusal import refusal

REPO = Path(__file__).resolve().parents[2]
FUNCTION = REPO / "tests" / "fixtures" / "any_function"
FUNCTION_NAME = "fault-producer"
SPILL_BUCKET = "relay-spill"
# Short flushes keep invocations during an outage quick; the records stay owned.
QUICK_FLUSH = {"KAFKA_RELAY_FLUSH_BUDGET_MS": "300",
               "KAFKA_PRODUCER_RECONNECT_BACKOFF_MAX_MS": "200"}
# Above what a 256 MB function may hold by default (delivery/budget.py); the tests using
# these pend 10,000-50,000 records at once.
UNTHROTTLED_LIMITS = {"KAFKA_RELAY_MAX_BUFFER_RECORDS": "100000",
                      "KAFKA_RELAY_MAX_BUFFER_BYTES": str(64 * 1024 * 1024)}


# -- helpers --------------------------------------------------------------------------------


def _sandbox(
    artifacts: Artifacts,
    bootstrap: str,
    topic: str,
    env: Mapping[str, str] | None = None,
    *,
    handler: str = "any_producer.handler",
    timeout_s: float = 10.0,
    log_path: Path | None = None,
    memory_mb: int | None = None,
) -> Sandbox:
    return Sandbox(
        layers=[artifacts.layer], function=FUNCTION, handler=handler,
        env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic,
             "KAFKA_RELAY_PORT": str(free_port()), **(env or {})},
        function_name=FUNCTION_NAME, timeout_s=timeout_s, log_path=log_path,
        memory_mb=memory_mb,
    )


def _invoke(sandbox: Sandbox, event: dict[str, Any]) -> InvokeResult:
    result = sandbox.invoke(event)
    assert result.status == "success", result.error
    assert isinstance(result.payload, dict)
    return result


def _delivered(sandbox: Sandbox, run: str, count: int) -> list[str]:
    """Hands ``count`` records over and waits until each is delivered: a known-good start."""
    payload = _invoke(sandbox, {"run": run, "count": count, "wait": True}).payload
    assert [o["outcome"] for o in payload["outcomes"]] == ["delivered"] * count
    return list(payload["ids"])


def _done(sandbox: Sandbox, result: InvokeResult) -> dict[str, Any]:
    """The extension's ``invocation.done`` line for one invocation. An invocation that was not
    flushed (deferred, or the breaker open) is reported at the next event: an empty
    invocation brings that line out."""
    def lines() -> list[dict[str, Any]]:
        return [e for e in events_named(sandbox.log_lines(), "invocation.done")
                if e.get("request_id") == result.request_id]
    if not lines():
        _invoke(sandbox, {"count": 0, "records": []})  # either handler: nothing to send
    (done,) = lines()
    return done


def _assert_clean_exit(shutdown: ShutdownResult) -> None:
    assert shutdown.killed == [], (
        f"SIGKILLed at the SHUTDOWN deadline after {shutdown.duration_ms:.0f} ms: "
        "whatever it had not spilled yet is lost")
    assert shutdown.exit_codes == {"kafka-relay": 0}


def _assert_summary(
    lines: Sequence[str], *, accepted: int, delivered: int, dead_lettered: int = 0,
    spilled: int = 0,
) -> dict[str, Any]:
    (summary,) = events_named(lines, "shutdown.summary")
    got = {k: summary[k] for k in ("accepted", "delivered", "dead_lettered", "spilled",
                                   "pending", "unaccounted")}
    assert got == {"accepted": accepted, "delivered": delivered,
                   "dead_lettered": dead_lettered, "spilled": spilled, "pending": 0,
                   "unaccounted": 0}
    return summary


def _table(lines: Sequence[str]) -> dict[str, Any]:
    """``kafka-relay-logs --json`` over the sandbox's lines: the per-invocation table."""
    parser = LogParser()
    parser.feed_all(LogLine(line) for line in lines)
    return summarise(parser, View())


def _ids(records: Sequence[ConsumedRecord]) -> Counter[str]:
    return Counter(r.headers["x-relay-id"].decode() for r in records)


def _assert_dedupable(records: Sequence[ConsumedRecord], sent: Sequence[str]) -> None:
    """Every id is on the topic (0 lost); any duplicate is an identical copy under its id."""
    copies: dict[str, set[tuple[bytes | None, bytes | None]]] = {}
    for record in records:
        copies.setdefault(record.headers["x-relay-id"].decode(), set()).add(
            (record.key, record.value))
    assert set(copies) == set(sent)
    assert all(len(versions) == 1 for versions in copies.values())


def _read_all(broker: Broker, topic: str) -> list[ConsumedRecord]:
    """Everything on ``topic`` (until it is idle at its end): duplicates included."""
    return broker.read(topic, timeout=30)


def _replay(args: Sequence[str], env: Mapping[str, str]) -> str:
    """``python -m kafka_relay.tools.replay`` as an operator runs it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "kafka_relay.tools.replay", *args], cwd=REPO, capture_output=True,
        text=True, timeout=90, check=False,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "extension"), **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _extension_pid(sandbox: Sandbox) -> int:
    for pid in sandbox.pids():
        try:
            if b"kafka_relay" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no kafka_relay process among {sandbox.pids()}")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


def _sandbox_children() -> list[str]:
    """Live (non-zombie) runtime and extension processes this test process started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat[stat.rfind(")") + 2:].split()[:2]
        ours = int(ppid) == os.getpid() and state not in "ZX"
        if ours and ("kafka_relay" in cmdline or "awslambdaric" in cmdline):
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 3
    while (left := _sandbox_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], "sandbox processes outlived their test"


# -- 1. broker unreachable across frozen invocations ------------------------------------------


def _outage_across_frozen_invocations(
    artifacts: Artifacts, proxied: ProxiedBroker, *, outage_s: float, frozen_s: float,
    env: Mapping[str, str],
) -> None:
    broker, proxy = proxied.broker, proxied.proxy
    topic = broker.create_topic()
    with _sandbox(artifacts, proxy.address, topic, {**QUICK_FLUSH, **env}) as sandbox:
        sent = _delivered(sandbox, "before", 10)
        proxy.cut()
        cut_at, n = time.monotonic(), 0
        while time.monotonic() - cut_at < outage_s:
            result = _invoke(sandbox, {"run": f"during{n}", "count": 10})
            sent += result.payload["ids"]
            assert process_state(_extension_pid(sandbox)) == "T", "frozen between invokes"
            time.sleep(frozen_s)  # wall-clock time passes while nothing in it runs
            n += 1
        assert _done(sandbox, result)["pending"] > 0, "the outage must hold records back"
        proxy.restore()
        result = _invoke(sandbox, {"run": "after", "count": 10})
        sent += result.payload["ids"]
        recovery_deadline = time.monotonic() + 60
        while _done(sandbox, result)["pending"] and time.monotonic() < recovery_deadline:
            time.sleep(0.1)
            result = _invoke(sandbox, {"count": 0})  # records waiting out a retry backoff
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    _assert_summary(lines, accepted=len(sent), delivered=len(sent))
    _assert_dedupable(_read_all(broker, topic), sent)


def test_a_connection_dropped_while_frozen_is_reopened_and_the_next_invocation_delivers(
    artifacts: Artifacts, proxied_broker: ProxiedBroker
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    # librdkafka's debug log says when it re-bootstraps (a count of the proxy's connections
    # would also count a reconnect retried under load).
    with _sandbox(artifacts, proxy.address, topic, {"KAFKA_PRODUCER_DEBUG": "generic",
                                                    "KAFKA_RELAY_LOG_LEVEL": "DEBUG"}) as sandbox:
        sent = _delivered(sandbox, "before", 10)
        opened = proxy.stats.connections
        proxy.cut()  # the idle connection dies while nothing in the environment runs
        proxy.restore()
        after = _invoke(sandbox, {"run": "after", "count": 10})
        sent += after.payload["ids"]
        done = _done(sandbox, after)
        reopened = proxy.stats.connections - opened
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert (done["delivered"], done["pending"]) == (10, 0), "delivered before the next freeze"
    assert reopened >= 1, "the known broker reconnected"
    assert [line for line in lines if "Starting re-bootstrap" in line] == []
    _assert_clean_exit(shutdown)
    _assert_summary(lines, accepted=20, delivered=20)
    _assert_dedupable(_read_all(broker, topic), sent)


OUTAGE_VARIANTS = {
    # Records wait inside librdkafka (message.timeout.ms 300 s) through the outage.
    "records-wait-in-librdkafka": {},
    # Records time out locally while frozen (the freeze pitfall): retried, never lost.
    "records-time-out-while-frozen": {"KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS": "1500",
                                      "KAFKA_RELAY_RETRY_BACKOFF_MS": "100",
                                      "KAFKA_RELAY_MAX_ATTEMPTS": "50"},
}


@pytest.mark.parametrize("variant", sorted(OUTAGE_VARIANTS))
def test_a_short_outage_across_frozen_invocations_delivers_every_record(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, variant: str
) -> None:
    _outage_across_frozen_invocations(artifacts, proxied_broker, outage_s=3, frozen_s=0.3,
                                      env=OUTAGE_VARIANTS[variant])


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(OUTAGE_VARIANTS))
def test_a_30_second_outage_across_frozen_invocations_delivers_every_record(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, variant: str
) -> None:
    _outage_across_frozen_invocations(artifacts, proxied_broker, outage_s=30, frozen_s=1.0,
                                      env=OUTAGE_VARIANTS[variant])


# -- 2. broker down through SHUTDOWN: spilled, then replayed ---------------------------------


@dataclass(frozen=True)
class Stranded:
    topic: str
    warm: list[str]  # delivered before the cut
    spilled: list[str]  # accepted while the broker was down, spilled at SHUTDOWN
    lines: list[str]  # the log stream


def _down_through_shutdown(
    artifacts: Artifacts, proxied: ProxiedBroker, env: Mapping[str, str], log_path: Path
) -> Stranded:
    broker, proxy = proxied.broker, proxied.proxy
    topic = broker.create_topic()
    with _sandbox(artifacts, proxy.address, topic, {**QUICK_FLUSH, **env},
                  log_path=log_path) as sandbox:
        warm = _delivered(sandbox, "warm", 5)
        proxy.cut()
        down = [_invoke(sandbox, {"run": f"down{n}", "count": 20}) for n in range(2)]
        spilled = [i for result in down for i in result.payload["ids"]]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    _assert_summary(lines, accepted=45, delivered=5, spilled=40)
    # The logs table: each down invocation's 20 records spilled at SHUTDOWN, in its own row.
    table = _table(lines)
    assert table["checks"] == []
    rows = {row["request_id"]: row["counts"] for row in table["invocations"]}
    for result in down:
        assert rows[result.request_id] == {"accepted": 20, "spilled": 20}
    assert table["after_last_invocation"]["spilled"] == 40
    assert (table["totals"]["accepted"], table["totals"]["delivered"],
            table["totals"]["spilled"]) == (45, 5, 40)
    proxy.restore()
    return Stranded(topic, warm, spilled, lines)


def _assert_replayed(broker: Broker, stranded: Stranded, replay_output: str) -> None:
    assert "produced 40, failed 0" in replay_output
    records = _read_all(broker, stranded.topic)
    on_topic = _ids(records)
    assert set(on_topic) == {*stranded.warm, *stranded.spilled}
    assert all(on_topic[i] == 1 for i in stranded.spilled), "one replay, one copy each"
    keys = {r.key for r in records}
    assert keys == {f"{run}-{i}".encode() for run, count in (("warm", 5), ("down0", 20),
                                                             ("down1", 20)) for i in range(count)}


def test_broker_down_through_shutdown_spills_to_s3_and_replay_restores_every_id(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, moto: MotoServer, tmp_path: Path
) -> None:
    moto.reset()
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=SPILL_BUCKET)
    stranded = _down_through_shutdown(
        artifacts, proxied_broker, {**moto.env(), "KAFKA_RELAY_SPILL_BUCKET": SPILL_BUCKET},
        tmp_path / "sandbox.log")
    spills = events_named(stranded.lines, "spill.s3")
    assert sum(e["records"] for e in spills) == 40
    prefix = f"kafka-relay/{FUNCTION_NAME}/"
    assert all(e["destination"].startswith(f"s3://{SPILL_BUCKET}/{prefix}") for e in spills)
    assert parse_spill_lines(stranded.lines).records == [], "S3 took them: no log-line spill"
    output = _replay([f"s3://{SPILL_BUCKET}/{prefix}"],
                     {**moto.env(), "KAFKA_BOOTSTRAP_SERVERS": proxied_broker.proxy.address})
    _assert_replayed(proxied_broker.broker, stranded, output)


def test_broker_down_through_shutdown_spills_to_log_lines_and_replay_restores_every_id(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    log = tmp_path / "sandbox.log"
    stranded = _down_through_shutdown(artifacts, proxied_broker, {}, log)
    assert {r.id for r in parse_spill_lines(stranded.lines).records} == set(stranded.spilled)
    env = {"KAFKA_BOOTSTRAP_SERVERS": proxied_broker.proxy.address, "HOME": str(tmp_path)}
    output = _replay(["--log-file", str(log)], env)
    again = _replay(["--log-file", str(log)], env)  # the state file under $HOME: no copies
    assert "skipped 40 replayed before" in again
    _assert_replayed(proxied_broker.broker, stranded, output)


def test_an_s3_spill_that_hangs_at_shutdown_falls_back_to_log_lines_before_sigkill(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, moto: MotoServer, tmp_path: Path
) -> None:
    # An endpoint that accepts connections and never answers: S3 from a VPC without a
    # route to it. botocore's defaults (60 s timeouts, retries) outlast the 2 s budget.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        endpoint = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        stranded = _down_through_shutdown(
            artifacts, proxied_broker,
            {**moto.env(), "AWS_ENDPOINT_URL": endpoint, "KAFKA_RELAY_SPILL_BUCKET": SPILL_BUCKET},
            tmp_path / "sandbox.log")
    assert {r.id for r in parse_spill_lines(stranded.lines).records} == set(stranded.spilled)


def test_shutdown_spills_50000_stranded_records_to_log_lines_before_sigkill(
    artifacts: Artifacts, proxied_broker: ProxiedBroker
) -> None:
    # All pending when SHUTDOWN comes. The sandbox's CPU is not throttled like a 256 MB
    # Lambda's, so explicit limits above the derived ones (which would answer 429 first).
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    with _sandbox(artifacts, proxy.address, topic, {**QUICK_FLUSH, **UNTHROTTLED_LIMITS},
                  timeout_s=30) as sandbox:
        sandbox.start()
        proxy.cut()
        ids = _invoke(sandbox, {"run": "bulk", "count": 50_000}).payload["ids"]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    _assert_summary(lines, accepted=50_000, delivered=0, spilled=50_000)
    assert {r.id for r in parse_spill_lines(lines).records} == set(ids)


@pytest.mark.parametrize("spool", [
    pytest.param(False, id="memory-alone-429"),
    pytest.param(True, id="default-spool-507"),
])
def test_a_256_mb_function_with_a_stalled_broker_fills_its_buffer_then_refuses_and_spills_all(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, spool: bool
) -> None:
    # Lambda's CPU share for 256 MB (the sandbox's quota) and the default limits, which are
    # sized so that SHUTDOWN can spill everything they hold at that share: the memory buffer
    # alone (KAFKA_RELAY_SPOOL_MAX_BYTES=0, then 429), or memory and the outage spool on
    # disk, each at its default limit (then 507).
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    env = QUICK_FLUSH if spool else {**QUICK_FLUSH, "KAFKA_RELAY_SPOOL_MAX_BYTES": "0"}
    with _sandbox(artifacts, proxy.address, topic, env, handler=(
            "any_producer.handler_until_busy"), timeout_s=8, memory_mb=256) as sandbox:
        sandbox.start()
        proxy.cut()
        reply = _invoke(sandbox, {"run": "fill", "count": 50, "size": 400}).payload
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert reply["busy"] is not None, "the buffer never filled: raise max_batches"
    status = reply["status"]
    limits, overflow = status["limits"], status["overflow"]
    assert status["pending"] <= limits["records"]
    assert status["pending_bytes"] <= limits["bytes"]
    if spool:
        assert "disk spool is at its limit" in reply["busy"]
        assert 0 < overflow["records"] <= overflow["limit_records"]
        assert overflow["files"] <= overflow["limit_batches"]
        assert overflow["bytes"] <= overflow["limit_bytes"]
        assert len(reply["ids"]) == status["pending"] + overflow["records"]
    else:
        assert overflow == {"enabled": False}
        assert len(reply["ids"]) == status["pending"]
    _assert_clean_exit(shutdown)
    assert events_named(lines, "overflow.left_at_shutdown") == []
    # Parked batches stay counted ``spooled``; SHUTDOWN spills them with the rest.
    parked = overflow["records"] if spool else 0
    summary = _assert_summary(lines, accepted=len(reply["ids"]), delivered=0,
                              spilled=len(reply["ids"]) - parked)
    assert (summary["spooled"], summary["spilled_at_shutdown"]) == (parked, len(reply["ids"]))
    assert {r.id for r in parse_spill_lines(lines).records} == set(reply["ids"])


def test_retries_exhausted_with_the_dlq_down_too_spool_to_tmp_and_a_later_invocation_resends(
    artifacts: Artifacts, proxied_broker: ProxiedBroker
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    dlq = broker.create_topic(f"dlq.{topic}")
    env = {**QUICK_FLUSH, "KAFKA_RELAY_FLUSH_BUDGET_MS": "4000", "KAFKA_RELAY_MAX_ATTEMPTS": "1",
           "KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS": "1000", "KAFKA_RELAY_RETRY_BACKOFF_MS": "100"}
    with _sandbox(artifacts, proxy.address, topic, env) as sandbox:
        sandbox.start()
        proxy.cut()
        during = _invoke(sandbox, {"run": "during", "count": 10})
        ids = during.payload["ids"]
        # Refused connections end the flush early; while later invocations run, the one
        # attempt times out, the DLQ times out too: the records go to /tmp, not kept in memory.
        done, deadline = _done(sandbox, during), time.monotonic() + 30
        spooled = done["spooled"]
        while spooled < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
            done = _done(sandbox, _invoke(sandbox, {"count": 0}))
            spooled += done["spooled"]
        assert (spooled, done["spilled"]) == (10, 0)
        # In memory after that: only what the same invocation's flush took back from /tmp
        # (the spool is read again once this process spooled), never records kept there.
        assert done["pending"] == done["restored"]
        proxy.restore()
        dead_lettered, deadline = 0, time.monotonic() + 30
        while dead_lettered < 10 and time.monotonic() < deadline:
            dead_lettered += _done(sandbox, _invoke(sandbox, {"count": 0}))["dead_lettered"]
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["accepted"], summary["delivered"], summary["dead_lettered"]) == (10, 0, 10)
    # A record may go round the spool more than once; each round is logged once, exactly.
    assert summary["spooled"] == summary["restored"] >= 10  # every spooled record came back
    assert sum(e["records"] for e in events_named(lines, "spill.spool")) == summary["spooled"]
    assert sum(e["records"] for e in events_named(lines, "spool.restored")) == summary["restored"]
    table = _table(lines)
    assert table["checks"] == []
    (row,) = [r for r in table["invocations"] if r["request_id"] == during.request_id]
    assert {k: row["counts"].get(k, 0) for k in ("accepted", "delivered", "dead_lettered")} \
        == {"accepted": 10, "delivered": 0, "dead_lettered": 10}
    assert (summary["spilled"], summary["pending"], summary["unaccounted"]) == (0, 0, 0)
    dead = {r.headers["x-relay-id"].decode(): r for r in _read_all(broker, dlq)}
    assert set(dead) == set(ids)
    assert all(r.headers["x-relay-error"].startswith(b"gave up after 1 attempts: _MSG_TIMED_OUT")
               for r in dead.values())


# -- 3. records Kafka refuses: dead-lettered (or spilled with a pointer), the rest delivered --


def test_an_oversize_record_is_spilled_with_a_dlq_pointer_and_the_rest_delivered(
    artifacts: Artifacts, broker: Broker
) -> None:
    # A topic Kafka forbids ("..") is now refused by validation (400, see the malformed-batch
    # test); the DLQ headers of a broker-rejected record are covered in test_handoff_api.
    topic = broker.create_topic()
    dlq = broker.create_topic(f"dlq.{topic}")
    records = [{"key": "good", "value": 1},
               {"key": "big", "value": "x" * 1_200_000},  # over message.max.bytes
               {"key": "good2", "value": 3}]
    with _sandbox(artifacts, broker.bootstrap, topic, {"KAFKA_DLQ_TOPIC": dlq},
                  handler="any_producer.handler_relaying_event_records") as sandbox:
        result = _invoke(sandbox, {"records": records, "wait": True})
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    good, big, good2 = result.payload["ids"]
    assert [o["outcome"] for o in result.payload["outcomes"]] == [
        "delivered", "spilled", "delivered"]
    _assert_summary(lines, accepted=3, delivered=2, dead_lettered=0, spilled=1)
    assert _ids(broker.read(topic, expected=2)) == Counter({good: 1, good2: 1})

    dead_letters = {r.headers["x-relay-id"].decode(): r for r in broker.read(dlq, expected=1)}
    assert sorted(dead_letters) == [big]
    pointer = dead_letters[big]
    assert pointer.headers["x-relay-error"].startswith(b"MSG_SIZE_TOO_LARGE")
    assert pointer.headers["x-relay-original-topic"] == topic.encode()
    where = f"KAFKA_RELAY_SPILL log lines of /aws/lambda/{FUNCTION_NAME} (id {big})"
    assert json_in_line((pointer.value or b"").decode()) == {
        "spilled_to": where, "id": big, "size": 1_200_005,
        "error": pointer.headers["x-relay-error"].decode()}
    assert pointer.headers["x-relay-spilled-to"] == where.encode()
    assert pointer.headers["x-relay-error-kind"] == b"permanent"
    assert pointer.headers["x-relay-function"] == FUNCTION_NAME.encode()
    (recovered,) = parse_spill_lines(lines).records  # the oversize bytes, for replay or repair
    assert (recovered.id, recovered.key, len(recovered.value or b"")) == (big, b"big", 1_200_002)


# -- 4. a malformed batch: rejected whole, with reasons ---------------------------------------


def test_a_malformed_batch_is_rejected_with_reasons_and_nothing_is_accepted(
    artifacts: Artifacts, broker: Broker
) -> None:
    topic = broker.create_topic()
    records = [{"key": "fine", "value": 1},
               {"key": 1, "value": 2},
               {"key": "k", "topic": "no spaces", "value": 3},
               {"key": "k", "value": 4, "colour": "red"},
               {"key": "k", "value": 5, "headers": {"x-relay-id": "forged"}},
               {"key": "k", "value": 6, "topic": ".."}]  # Kafka forbids the name
    with _sandbox(artifacts, broker.bootstrap, topic,
                  handler="any_producer.handler_relaying_event_records") as sandbox:
        result = _invoke(sandbox, {"records": records})
        done = _done(sandbox, result)
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    reasons = result.payload["rejected"]
    assert [r["index"] for r in reasons] == [1, 2, 3, 4, 5]
    assert all(r["reason"] for r in reasons)
    status = result.payload["status"]
    assert (status["counts"]["accepted"], status["pending"]) == (0, 0)
    assert done["accepted"] == 0
    _assert_summary(lines, accepted=0, delivered=0)
    assert broker.read(topic, timeout=2) == []


# -- 5. function timeout: the next invocation's fresh environment works too --------------------


def test_after_a_timeout_reset_the_fresh_environment_reuses_the_port_and_delivers(
    artifacts: Artifacts, broker: Broker
) -> None:
    topic = broker.create_topic()
    with _sandbox(artifacts, broker.bootstrap, topic, timeout_s=2.0,
                  handler="any_producer.handler_that_may_time_out") as sandbox:
        sandbox.start()
        first_pid = _extension_pid(sandbox)
        late = sandbox.invoke({"run": "late", "count": 25, "sleep_s": 30})
        fresh = _invoke(sandbox, {"run": "fresh", "count": 10})
        second_pid = _extension_pid(sandbox)
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    assert late.status == "timeout"
    assert late.reset is not None
    _assert_clean_exit(late.reset)
    _assert_clean_exit(shutdown)
    assert fresh.init_ms is not None, "the invoke after the reset ran a new init"
    assert second_pid != first_pid
    summaries = events_named(lines, "shutdown.summary")
    assert [(s["reason"], s["accepted"], s["delivered"], s["unaccounted"]) for s in summaries] == [
        ("timeout", 25, 25, 0), ("spindown", 10, 10, 0)]
    records = _read_all(broker, topic)
    assert set(_ids(records)) >= set(fresh.payload["ids"])
    assert {r.key for r in records} == {f"{run}-{i}".encode()
                                        for run, count in (("late", 25), ("fresh", 10))
                                        for i in range(count)}


# -- 6. SHUTDOWN while a large flush is stalled: done or spilled before the deadline ----------


def test_shutdown_during_a_stalled_large_flush_settles_everything_before_sigkill(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    proxy.set_latency(up_ms=30, down_ms=30)  # a remote cluster
    log = tmp_path / "sandbox.log"
    big = [{"key": f"big-{i}", "value": {"i": i, "pad": "x" * 200}} for i in range(10_000)]
    with _sandbox(artifacts, proxy.address, topic,
                  {"KAFKA_RELAY_FLUSH_BUDGET_MS": "500", **UNTHROTTLED_LIMITS},
                  handler="any_producer.handler_relaying_event_records",
                  log_path=log) as sandbox:
        warm = _invoke(sandbox, {"records": [{"key": "warm", "value": 0}]}).payload["ids"]

        def stall_once_handed_over() -> None:
            sandbox.wait_for_log(r"handler\.handed_over.*10000", timeout=20)
            proxy.pause()  # the broker stops answering mid-flush

        staller = threading.Thread(target=stall_once_handed_over, daemon=True)
        staller.start()
        result = _invoke(sandbox, {"records": big})
        staller.join(timeout=5)
        assert _done(sandbox, result)["pending"] > 0, "the flush must still be under way"
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    assert shutdown.duration_ms < sandbox.shutdown_budget_ms
    sent = [*warm, *result.payload["ids"]]
    (summary,) = events_named(lines, "shutdown.summary")
    stranded = summary["spilled"]
    assert 0 < stranded == summary["spilled_at_shutdown"]
    _assert_summary(lines, accepted=len(sent), delivered=len(sent) - stranded, spilled=stranded)
    spilled = {r.id for r in parse_spill_lines(lines).records}
    assert len(spilled) == stranded

    proxy.resume()
    output = _replay(["--log-file", str(log)], {"KAFKA_BOOTSTRAP_SERVERS": proxy.address})
    assert f"produced {len(spilled)}, failed 0" in output
    assert set(_ids(_read_all(broker, topic))) == set(sent)


# -- 7. SASL_SSL: wrong credentials stop init naming the cause; right ones deliver ------------


def _sasl_env(ca_path: Path, password: str) -> dict[str, str]:
    return {"KAFKA_API_KEY": DEFAULT_USERNAME, "KAFKA_API_SECRET": password,
            "KAFKA_PRODUCER_SSL_CA_LOCATION": str(ca_path), "KAFKA_RELAY_INIT_PROBE_MS": "1500"}


@pytest.mark.parametrize("initialization", ["on-demand", "provisioned-concurrency"])
def test_wrong_sasl_credentials_fail_with_an_auth_error_naming_the_cause(
    artifacts: Artifacts, initialization: str
) -> None:
    """Provisioned concurrency probes the broker before /next: init fails. On demand the probe
    runs after /next: the same error ends the first invocation and its environment."""
    with sasl_broker() as sasl:
        sandbox = _sandbox(artifacts, sasl.bootstrap, "secure.events",
                           {**_sasl_env(sasl.proxy.ca_path, "wrong"),
                            "AWS_LAMBDA_INITIALIZATION_TYPE": initialization})
        with sandbox:
            phase, error_type, message = refusal(sandbox)
    assert phase in (("init", "invoke") if initialization == "on-demand" else ("init",))
    assert error_type == "Extension.AuthError"
    assert "Authentication failed" in message
    assert "KAFKA_API_KEY" in message


def test_right_sasl_credentials_deliver_over_sasl_ssl(artifacts: Artifacts) -> None:
    with sasl_broker() as sasl:
        topic = sasl.create_topic("secure.events")
        with _sandbox(artifacts, sasl.bootstrap, topic,
                      _sasl_env(sasl.proxy.ca_path, DEFAULT_PASSWORD)) as sandbox:
            ids = _invoke(sandbox, {"run": "secure", "count": 5}).payload["ids"]
            shutdown = sandbox.shutdown("spindown")
            lines = sandbox.log_lines()
        records = read_topic(sasl.bootstrap, topic, expected=5,
                             client_config=sasl.proxy.client_config())
    _assert_clean_exit(shutdown)
    (ready,) = events_named(lines, "init.ready")
    assert ready["protocol"] == "SASL_SSL"
    _assert_summary(lines, accepted=5, delivered=5)
    assert _ids(records) == Counter(ids)


# -- 8. soak: many invocations in one environment, nothing lost, memory flat ------------------


def _soak(artifacts: Artifacts, broker: Broker, *, invocations: int, baseline_after: int,
          max_growth_kb: int) -> None:
    topic = broker.create_topic()
    per_invocation = 10
    sent: list[str] = []
    with _sandbox(artifacts, broker.bootstrap, topic) as sandbox:
        for n in range(1, invocations + 1):
            sent += _invoke(sandbox, {"run": f"s{n}", "count": per_invocation}).payload["ids"]
            if n == baseline_after:
                pid = _extension_pid(sandbox)
                baseline_kb = _rss_kb(pid)
        assert _extension_pid(sandbox) == pid, "one environment, one extension process"
        final_kb = _rss_kb(pid)
        shutdown = sandbox.shutdown("spindown")
        lines = sandbox.log_lines()
    _assert_clean_exit(shutdown)
    total = invocations * per_invocation
    summary = _assert_summary(lines, accepted=total, delivered=total)
    assert summary["invocations"] == invocations
    assert summary["producers_built"] == 1
    assert set(_ids(_read_all(broker, topic))) == set(sent)
    assert final_kb - baseline_kb < max_growth_kb, (
        f"extension RSS grew {baseline_kb} kB -> {final_kb} kB after invocation {baseline_after}")


def test_100_invocations_in_one_environment_lose_nothing_and_memory_stays_flat(
    artifacts: Artifacts, broker: Broker
) -> None:
    _soak(artifacts, broker, invocations=100, baseline_after=20, max_growth_kb=8 * 1024)


@pytest.mark.slow
def test_1000_invocations_in_one_environment_lose_nothing_and_memory_stays_flat(
    artifacts: Artifacts, broker: Broker
) -> None:
    _soak(artifacts, broker, invocations=1000, baseline_after=100, max_growth_kb=15 * 1024)
