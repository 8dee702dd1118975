"""The ring transport against the real extension and broker: the client's default path for a
plain send. Records arrive byte-identical and answer as over HTTP, every refusal raises what
HTTP raises, a full ring is RelayBusy, no listener means HTTP, a lost answer never hands a
body over twice, the ring wraps around, several writer processes share one listener, and an
extension that starts over a ring takes over what it accepted and did not settle."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.kafka_broker import free_port
from kafka_relay.client import (
    BatchTooLarge,
    RecordRejected,
    RelayBusy,
    RelayClient,
    RelayError,
    RelayNotRestored,
    RelayShuttingDown,
)
from kafka_relay.config import FlushStrategy
from kafka_relay.protocol import FRAMES_TYPE, encode_frames
from kafka_relay.ring import (
    ACCEPTED,
    REFUSED,
    RING_DIR_ENV,
    RING_ENV,
    Ring,
    Writer,
    answer_head,
    body_message,
    count_takeover,
    create,
    hello,
    pending,
    socket_address,
)
from tests.conftest import Broker
from tests.functional.test_ring_file import version_1_file
from tests.relay_harness import TOKEN, Harness, running_relay

REPO = Path(__file__).resolve().parents[2]


def _rings(h: Harness) -> list[Path]:
    return sorted(h.config.ring_dir.glob("kafka-relay-ring-*.ring"))


def _http_client(h: Harness, **kwargs: Any) -> RelayClient:
    return RelayClient(env={RING_ENV: "false"}, port=h.config.port, **kwargs)


def _ring_client(h: Harness, **kwargs: Any) -> RelayClient:
    return RelayClient(env={RING_DIR_ENV: str(h.config.ring_dir)}, port=h.config.port,
                       **kwargs)


def _writer(h: Harness, token: str = TOKEN) -> Writer:
    return Writer(h.config.ring_dir, h.config.port, token, clock=time.monotonic)


def _hand(writer: Writer, body: bytes) -> tuple[int, dict[str, Any]]:
    now = time.monotonic()
    handed = writer.exchange(body, None, deadline=now + 5)
    assert handed is not None, "the ring listener did not answer"
    return handed[0], json.loads(handed[1])


def _post(h: Harness, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", h.config.port, timeout=10)
    try:
        conn.request("POST", "/v1/records", body, {"X-Kafka-Relay-Token": TOKEN,
                                                   "Content-Type": FRAMES_TYPE})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_plain_send_goes_through_the_ring_and_arrives_byte_identical(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    records = [{"key": f"k{i}", "value": {"i": i, "text": "é😀"}, "headers": {"h": "v"}}
               for i in range(50)]
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        result = h.client.send(records)
        (ring_path,) = _rings(h)
        tag = ring_path.name.rsplit("-", 1)[1][:-5]
        assert result.accepted == 50
        assert result.ids == [f"{tag}-0-{i}" for i in range(50)]  # ids from the ring entry
        assert h.client.flush()["remaining"] == 0
        ring = Ring.open(ring_path)
        try:
            assert ring.consumed == ring.written > 0  # settled: consumed to the end
        finally:
            ring.close()
        assert not (h.config.journal_dir / "kafka-relay-journal-0.bin").exists() or all(
            p.stat().st_size < 4096 for p in h.config.journal_dir.glob("*.bin"))
    got = broker.read(topic, expected=50)
    assert [(r.key, r.value, r.headers["h"], r.headers["x-relay-id"].decode()) for r in got] == [
        (f"k{i}".encode(), json.dumps({"i": i, "text": "é😀"}, ensure_ascii=False,
                                      separators=(",", ":")).encode(), b"v", result.ids[i])
        for i in range(50)]


def test_every_refusal_raises_what_http_raises(broker: Broker, tmp_path: Path) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    with running_relay(unreachable, tmp_path, default_topic="t", max_body_bytes=3000,
                       max_buffer_records=5, init_probe_ms=100, spool_max_bytes=0,
                       flush=FlushStrategy.parse("shutdown")) as h:
        cases: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
            ([{"key": "a", "value": 1, "topic": "no spaces allowed"}], {}),  # 400
            ([{"key": "a", "value": "x" * 4000}], {}),  # 413 (body over the limit)
            ([{"key": str(i), "value": i} for i in range(6)], {}),  # 413 (over the buffer)
            ([{"key": "a", "value": 1}], {"token": "wrong"}),  # 401
        ]
        for records, kwargs in cases:
            outcomes = []
            for make in (_ring_client, _http_client):
                client = make(h, timeout_s=3.0, token=kwargs.get("token", TOKEN))
                try:
                    client.send(records)
                except RelayError as exc:
                    outcomes.append((type(exc), str(exc)))
                finally:
                    client.close()
            assert len(outcomes) == 2, outcomes
            assert outcomes[0] == outcomes[1]
            assert outcomes[0][0] in (RecordRejected, BatchTooLarge, RelayError)
        h.client.send([{"key": str(i), "value": i} for i in range(5)])  # the buffer is full
        busy = []
        for make in (_ring_client, _http_client):
            client = make(h, timeout_s=3.0, token=TOKEN)
            with pytest.raises(RelayBusy, match="NOT accepted") as caught:
                client.send([{"key": "late", "value": 1}])
            busy.append(str(caught.value))
            client.close()
        assert busy[0] == busy[1]
        assert h.parts.engine.gauge().counts["accepted"] == 5
        # Every refused body is marked: the 5 accepted records are all a takeover would find.
        found = []
        for path in _rings(h):
            ring = Ring.open(path)
            found += [bytes(body) for _position, _end, _request_id, body in pending(ring)]
            ring.close()
        assert found == [encode_frames([{"key": str(i), "value": i} for i in range(5)])]


def test_a_ring_without_room_hands_the_body_over_http_at_once(tmp_path: Path) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    with running_relay(unreachable, tmp_path, default_topic="t", init_probe_ms=100,
                       spool_max_bytes=0, max_buffer_bytes=64 << 20,
                       flush=FlushStrategy.parse("shutdown")) as h:
        big = [{"key": "k", "value": "x" * 19_000} for _ in range(100)]
        h.client.send(big)
        h.client.send(big)  # the ring holds two: the broker settles nothing
        journal_before = h.client.status()["journal"]["records"]
        started = time.monotonic()
        third = h.client.send(big)
        assert time.monotonic() - started < 0.5  # no wait for room
        assert third.accepted == 100
        # Over HTTP: journaled by the extension, not in the ring.
        status = h.client.status()
        assert status["journal"]["records"] == journal_before + 100
        assert status["rings"]["records"] == 200
        assert h.parts.engine.gauge().counts["accepted"] == 300


def test_without_a_ring_listener_the_client_uses_http(broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                       env_extra={RING_ENV: "false"}) as h:
        result = h.client.send([{"key": "k", "value": 1}])
        assert result.accepted == 1
        assert not _rings(h), "no ring is made where no listener answers"
        assert h.client.flush()["remaining"] == 0
    assert [r.key for r in broker.read(topic, expected=1)] == [b"k"]


def test_an_announcement_repeated_after_a_lost_answer_hands_the_body_over_once(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        writer = _writer(h)
        status, first = _hand(writer, encode_frames([{"key": "once", "value": 1}]))
        assert status == 202
        (path,) = _rings(h)
        position = 0
        ring = Ring.open(path)
        assert ring.state(position) & ACCEPTED
        # A second connection announces the same entry again, as after a lost answer.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        sock.connect(socket_address(h.config.port))
        sock.send(hello(TOKEN, path))
        assert answer_head(sock.recv(65536))[0] == 200
        body_length = ring.state(position) & 0x3FFFFFFF
        sock.send(body_message(position, body_length))
        status, _length, data = answer_head(sock.recv(65536))
        sock.close()
        ring.close()
        assert (status, json.loads(data)) == (202, first)
        assert h.client.flush()["remaining"] == 0
        writer.close()
        assert h.parts.engine.gauge().counts["accepted"] == 1
    assert [r.key for r in broker.read(topic, expected=1, timeout=3)] == [b"once"]


def test_a_refusal_racing_an_announcement_after_a_lost_answer_raises_what_http_raises(
    tmp_path: Path
) -> None:
    """The client's read of the answer times out while the extension waits for the ledger (its
    lock held here); the extension then refuses the body (it is shutting down) before the
    client, which found the entry not yet answered, announces it again: the entry is refused
    already, so the client hands the body over afresh and raises what HTTP raises for it."""
    unreachable = f"127.0.0.1:{free_port()}"
    with running_relay(unreachable, tmp_path, default_topic="t", init_probe_ms=100,
                       flush=FlushStrategy.parse("shutdown")) as h:
        ledger = h.parts.engine._ledger
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with ledger.cond:
                held.set()
                release.wait(10)
                ledger.close("the extension is shutting down and accepts no more records")

        holder = threading.Thread(target=hold, daemon=True)
        skew = [0.0]

        def clock() -> float:
            writer = client._ring
            assert writer is not None
            if holder.is_alive() and writer._sock is None and not release.is_set():
                # The answer was lost and the entry is not answered yet: the extension refuses
                # it now, before the client announces it again.
                release.set()
                holder.join(10)
                ring = Ring.open(path)
                deadline = time.monotonic() + 5
                while not any(word & REFUSED for _p, word, _e in ring.entries()) and (
                        time.monotonic() < deadline):
                    time.sleep(0.01)
                refused = [word & REFUSED for _p, word, _e in ring.entries()]
                ring.close()
                assert refused == [0, REFUSED]
                skew[0] = -30.0  # time enough from here on
            return time.monotonic() + skew[0]

        client = _ring_client(h, token=TOKEN, timeout_s=0.5, clock=clock)
        assert client.send([{"key": "first", "value": 1}]).accepted == 1
        (path,) = _rings(h)
        holder.start()
        assert held.wait(5)
        with pytest.raises(RelayShuttingDown) as over_ring:
            client.send([{"key": "raced", "value": 1}])
        assert release.is_set(), "the race did not happen"
        with pytest.raises(RelayShuttingDown) as over_http:
            _http_client(h, token=TOKEN).send([{"key": "raced", "value": 1}])
        assert str(over_ring.value) == str(over_http.value)
        assert h.parts.engine.gauge().counts["accepted"] == 1
        ring = Ring.open(path)
        try:  # the raced entry, and the one handed over afresh: both refused
            assert [word & (ACCEPTED | REFUSED) for _p, word, _e in ring.entries()] == [
                ACCEPTED, REFUSED, REFUSED]
        finally:
            ring.close()
        client.close()


def test_bodies_wrap_around_the_ring_in_order(broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        sent = []
        for n in range(30):  # ~12 MB through a 4 MiB ring
            batch = [{"key": f"{n}-{i}", "value": "v" * 4000} for i in range(100)]
            sent += h.client.send(batch).ids
            if n % 5 == 4:
                h.client.flush()
        assert h.client.flush()["remaining"] == 0
        (path,) = _rings(h)
        ring = Ring.open(path)
        assert ring.written > 2 * ring.capacity
        assert ring.consumed == ring.written
        ring.close()
    got = broker.read(topic, expected=3000, timeout=30)
    assert [r.headers["x-relay-id"].decode() for r in got] == sent


_WRITER = """
import sys
from kafka_relay.client import RelayClient
client = RelayClient(env={"KAFKA_RELAY_RING_DIR": sys.argv[1]}, port=int(sys.argv[2]),
                     token=sys.argv[3])
ids = []
for n in range(20):
    ids += client.send([{"key": f"{sys.argv[4]}-{n}-{i}", "value": i} for i in range(10)]).ids
print(len(ids), len(set(ids)), flush=True)
"""


def test_several_writer_processes_each_hand_over_through_a_ring_of_their_own(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        procs = [subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(h.config.ring_dir), str(h.config.port), TOKEN,
             f"p{n}"], cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={"PYTHONPATH": f"{REPO / 'extension'}:{REPO}"}) for n in range(3)]
        outputs = [p.communicate(timeout=60)[0].split() for p in procs]
        assert outputs == [["200", "200"]] * 3
        assert h.client.flush()["remaining"] == 0
        assert h.parts.engine.gauge().counts["accepted"] == 600
        # The writers are gone and their rings consumed: deleted.
        deadline = time.monotonic() + 5
        while _rings(h) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rings(h) == []
    assert len({r.key for r in broker.read(topic, expected=600, timeout=20)}) == 600


_HOSTILE = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"KRF\x01\x01\x00\x00\x00", b"KRF\x01\x02\x00\x00\x00",
                               b"KRF\x01\x00\x00\x00\x00"]),
              st.binary(max_size=120)),
    st.builds(lambda records, cut: encode_frames(records)[:cut],
              st.lists(st.fixed_dictionaries({"key": st.text(max_size=5),
                                              "value": st.integers()}), min_size=1,
                       max_size=3),
              st.integers(0, 80)),
)


def test_hostile_bodies_get_the_same_verdicts_through_the_ring_as_over_http(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        writer = _writer(h)

        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(_HOSTILE)
        def same(body: bytes) -> None:
            ring_status, ring_reply = _hand(writer, body)
            http_status, http_reply = _post(h, body)
            assert ring_status == http_status
            if ring_status == 202:
                assert ring_reply["accepted"] == http_reply["accepted"]
            else:
                assert ring_reply == http_reply

        same()
        writer.close()


_KILLED_WRITER = """
import os, signal, sys
from kafka_relay.client import RelayClient
client = RelayClient(env={"KAFKA_RELAY_RING_DIR": sys.argv[1]}, port=int(sys.argv[2]),
                     token=sys.argv[3])
client.begin(type("Context", (), {"aws_request_id": "req-killed"})())
ids = client.send([{"key": f"k{i}", "value": {"i": i, "pad": "x" * 3000}}
                   for i in range(300)]).ids
print(" ".join(ids), flush=True)
signal.pause()
"""


def test_an_extension_starting_over_a_dead_writers_ring_delivers_what_it_accepted(
    broker: Broker, tmp_path: Path
) -> None:
    """The first extension accepts through the ring while the broker is unreachable (most
    records past the in-flight window keep no bytes: read back from the ring) and stops
    without draining, as a killed one would; the writer is SIGKILLed; the next extension
    takes the ring over at init and delivers every record byte-identical, counted for the
    invocation that handed them over, then deletes it."""
    topic = broker.create_topic()
    port = free_port()
    unreachable = f"127.0.0.1:{free_port()}"
    env = {"KAFKA_RELAY_PORT": str(port)}
    with running_relay(unreachable, tmp_path, default_topic=topic, init_probe_ms=100,
                       flush=FlushStrategy.parse("shutdown"), env_extra=env) as h:
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(h.config.ring_dir), str(port), TOKEN],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={"PYTHONPATH": f"{REPO / 'extension'}:{REPO}"})
        assert writer.stdout is not None
        ids = writer.stdout.readline().split()
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        assert len(ids) == 300
        assert h.parts.engine.gauge().pending == 300
        # Past the in-flight window at once, the rest once the pump handed them to librdkafka
        # (it may not have yet on a loaded machine): none keeps its bytes in the process.
        deadline = time.monotonic() + 10
        while (cold := sum(1 for r in h.parts.engine._ledger.unsettled.values()
                           if r.value is None)) <= 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cold > 200, "records waiting keep their bytes in the ring, not in the process"
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic, env_extra=env) as h:
        (taken,) = h.log_events("ring.taken_over")
        assert taken["records"] == 300
        assert h.client.flush()["remaining"] == 0
        gauge = h.parts.engine.gauge(take_outcomes=True)
        assert gauge.counts["restored"] == 300
        assert gauge.by_request == {"req-killed": {"recovered": 300, "delivered": 300}}
        assert list(h.config.ring_dir.glob("kafka-relay-ring-*.ring")) == []
        assert h.client.status()["rings"] == {"files": 0, "records": 0}
    got = broker.read(topic, expected=300, timeout=20)
    assert [(r.headers["x-relay-id"].decode(), r.key, r.value) for r in got] == [
        (ids[i], f"k{i}".encode(), json.dumps({"i": i, "pad": "x" * 3000},
                                              separators=(",", ":")).encode())
        for i in range(300)]


_KILLED_AS_A_CHILD_LINGERS = """
import os, signal, sys, time
from kafka_relay.client import RelayClient
client = RelayClient(env={"KAFKA_RELAY_RING_DIR": sys.argv[1]}, port=int(sys.argv[2]),
                     token=sys.argv[3])
print(client.send([{"key": f"k{i}", "value": i} for i in range(10)]).accepted, flush=True)
parent = os.getpid()
if os.fork() == 0:  # shares the ring's open file and its flock: a killed writer's last moments
    while os.getppid() == parent:
        time.sleep(0.001)
    time.sleep(0.02)
    os._exit(0)
signal.pause()
"""


def test_shutdown_deletes_the_consumed_rings_of_writers_killed_just_before_it(
    broker: Broker, tmp_path: Path
) -> None:
    """Lambda kills the runtime before SHUTDOWN; its flock comes free a few ms later (here 20
    ms, by a child sharing it). The drain waits for it, briefly, and deletes the consumed
    ring; a writer that lives on (this process) keeps its ring."""
    topic = broker.create_topic()
    port = free_port()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                       env_extra={"KAFKA_RELAY_PORT": str(port)}) as h:
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_AS_A_CHILD_LINGERS, str(h.config.ring_dir),
             str(port), TOKEN], cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={"PYTHONPATH": f"{REPO / 'extension'}:{REPO}"})
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "10"
        (killed,) = _rings(h)
        assert h.client.send([{"key": "alive", "value": 1}]).accepted == 1
        (alive,) = set(_rings(h)) - {killed}
        assert h.client.flush()["remaining"] == 0
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        started = time.monotonic()
        assert h.loop.shutdown("spindown", int(time.time() * 1000) + 2000) == 0
        took = time.monotonic() - started
        assert _rings(h) == [alive]
        assert took < 1.0, "a live writer's ring is waited for only briefly"
    assert len(broker.read(topic, expected=11, timeout=20)) == 11


class _Context:
    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id


def test_a_live_writer_after_an_extension_restart_has_its_pending_bodies_taken_over(
    broker: Broker, tmp_path: Path
) -> None:
    """Taken over at each restart, shown in /v1/status, and counted for the invocation that
    handed the records over, not under "-"."""
    topic = broker.create_topic()
    port = free_port()
    env = {"KAFKA_RELAY_PORT": str(port)}
    unreachable = f"127.0.0.1:{free_port()}"
    client = RelayClient(env={RING_DIR_ENV: str(tmp_path / "ring")}, port=port, token=TOKEN)
    try:
        for restart in range(2):  # the broker unreachable: the records stay pending
            with running_relay(unreachable, tmp_path, default_topic=topic, init_probe_ms=100,
                               flush=FlushStrategy.parse("shutdown"), env_extra=env) as down:
                if restart:
                    (taken,) = down.log_events("ring.taken_over")
                    assert (taken["records"], taken["recovered"]) == (10, 1)
                else:
                    client.begin(_Context("req-a"))
                    first = client.send([{"key": f"a{i}", "value": i} for i in range(10)]).ids
                assert down.client.status()["rings"] == {"files": 1, "records": 10}
                assert down.parts.engine.gauge(take_outcomes=True).by_request == {
                    "req-a": {"recovered" if restart else "accepted": 10}}
        with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                           env_extra=env) as h:
            (taken,) = h.log_events("ring.taken_over")  # at init: its writer lives on
            assert (taken["records"], taken["recovered"]) == (10, 2)
            client.begin(_Context("req-b"))
            second = client.send([{"key": f"b{i}", "value": i} for i in range(10)]).ids
            assert h.client.flush()["remaining"] == 0
            gauge = h.parts.engine.gauge(take_outcomes=True)
            assert gauge.counts["restored"] == 10
            assert gauge.by_request == {"req-a": {"recovered": 10, "delivered": 10},
                                        "req-b": {"accepted": 10, "delivered": 10}}
            assert h.client.status()["rings"] == {"files": 1, "records": 0}
    finally:
        client.close()
    got = broker.read(topic, expected=20, timeout=20)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(first + second)


def test_a_live_writers_ring_with_nothing_pending_is_no_takeover_at_the_next_init(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.create_topic()
    port = free_port()
    env = {"KAFKA_RELAY_PORT": str(port)}
    client = RelayClient(env={RING_DIR_ENV: str(tmp_path / "ring")}, port=port, token=TOKEN)
    try:
        with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                           env_extra=env) as h:
            client.send([{"key": f"a{i}", "value": i} for i in range(10)])
            assert h.client.flush()["remaining"] == 0
        with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                           env_extra=env) as h:
            assert h.log_events("ring.taken_over") == []
            assert client.send([{"key": "b", "value": 1}]).accepted == 1
            assert h.client.flush()["remaining"] == 0
            assert h.parts.engine.gauge().counts["restored"] == 0
    finally:
        client.close()
    assert len(broker.read(topic, expected=11, timeout=20)) == 11


def test_before_a_snapstart_restore_the_ring_refuses_as_http_does_and_keeps_nothing_open(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t",
                       env_extra={"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}) as h:
        h.parts.mode.restore_wait_s = 0  # type: ignore[attr-defined]  # SnapStart's
        refusals = []
        for make in (_ring_client, _http_client):
            client = make(h, timeout_s=3.0, token=TOKEN)
            with pytest.raises(RelayNotRestored) as caught:
                client.send([{"key": "early", "value": 1}])
            refusals.append(str(caught.value))
            client.close()
        assert refusals[0] == refusals[1]
        assert _rings(h) == [], "no ring is kept from before the restore"
        h.parts.mode.restore("test")
        sent = _ring_client(h, token=TOKEN).send([{"key": "late", "value": 1}])
        assert sent.accepted == 1
        assert len(_rings(h)) == 1


def test_bodies_taken_over_a_fourth_time_are_spilled_not_produced_again(
    broker: Broker, tmp_path: Path
) -> None:
    """A body whose extension died each of three times it was taken over is spilled (log
    lines), not produced a fourth time: a record that kills the process must not kill every
    next one too."""
    topic = broker.create_topic()
    port = free_port()
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    path = ring_dir / f"kafka-relay-ring-{port}-{'ab' * 8}.ring"
    fd = create(path)
    ring = Ring(fd, path)
    os.close(fd)  # the writer is gone
    position, _end = ring.append(encode_frames([{"key": f"k{i}", "value": i}
                                                for i in range(3)]))
    ring.mark(position, ACCEPTED)
    for _ in range(3):
        count_takeover(ring)
    ring.close()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                       env_extra={"KAFKA_RELAY_PORT": str(port)}) as h:
        counts = h.parts.engine.gauge().counts
        assert (counts["restored"], counts["spilled"]) == (3, 3)
        assert not path.exists(), "consumed, its writer gone: deleted"
    assert broker.read(topic, timeout=2) == []


def test_a_version_1_ring_is_taken_over_loudly_and_its_writer_sent_to_http(
    broker: Broker, tmp_path: Path
) -> None:
    """A dead writer's ring of the earlier format: its accepted bodies are delivered (counted
    under no request: version 1 entries have no request id) and the file deleted; a live
    writer of that format is refused at HELLO, naming the versions."""
    topic = broker.create_topic()
    port = free_port()
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    dead = ring_dir / f"kafka-relay-ring-{port}-{'ab' * 8}.ring"
    version_1_file(dead, 4096, [
        (ACCEPTED, encode_frames([{"key": f"old{i}", "value": i} for i in range(3)])),
        (REFUSED, encode_frames([{"key": "refused", "value": 0}]))])
    live = ring_dir / f"kafka-relay-ring-{port}-{'cd' * 8}.ring"
    version_1_file(live, 4096, [])
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # its writer lives
        with running_relay(broker.bootstrap, tmp_path, default_topic=topic,
                           env_extra={"KAFKA_RELAY_PORT": str(port)}) as h:
            assert sorted(e["path"] for e in h.log_events("ring.old_version")) == [
                str(dead), str(live)]
            assert h.client.flush()["remaining"] == 0
            gauge = h.parts.engine.gauge(take_outcomes=True)
            assert gauge.counts["restored"] == 3
            assert gauge.by_request == {"-": {"recovered": 3, "delivered": 3}}
            assert not dead.exists(), "consumed, its writer gone: deleted"
            for _ in range(2):  # such a writer says hello at every send: told once
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.settimeout(5)
                sock.connect(socket_address(port))
                sock.send(hello(TOKEN, live))
                status, _length, data = answer_head(sock.recv(65536))
                sock.close()
                assert status == 404
                assert "version 1; this extension takes version 2" in json.loads(data)["error"]
            assert len(h.log_events("ring.old_version")) == 3
    assert [r.key for r in broker.read(topic, expected=3, timeout=20)] == [
        b"old0", b"old1", b"old2"]
