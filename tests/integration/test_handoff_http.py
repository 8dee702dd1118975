"""HTTP hygiene of the handoff server (issue 13): bodies read exactly, chunked bodies,
idle connections, a connection cap, limits on every route, idempotent retries, bind errors."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devtools.kafka_broker import free_port
from kafka_relay.client import RelayClient
from kafka_relay.config import Config, FlushStrategy
from kafka_relay.errors import ConfigError, PortInUseError
from kafka_relay.handoff.body import MAPPED_BODY_BYTES
from kafka_relay.handoff.idempotency import IdempotencyCache
from kafka_relay.handoff.server import WAIT_PROBE_S, HandoffServer, HandoffState
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.observability.log import JsonLogger
from kafka_relay.protocol import (
    FRAMES_TYPE,
    IDEMPOTENCY_KEY_HEADER,
    RECORDS_PATH,
    TOKEN_HEADER,
    BatchTooLarge,
    RelayNotRestored,
    encode_frames,
    encode_value,
)
from kafka_relay.record import IdSource
from tests.conftest import Broker, ProxiedBroker
from tests.relay_harness import TOKEN, Harness, running_relay

_JSON = {TOKEN_HEADER: TOKEN, "Content-Type": "application/json"}


def _body(n: int = 1, start: int = 0) -> bytes:
    return json.dumps({"records": [{"key": f"k{i}", "value": i}
                                   for i in range(start, start + n)]}).encode()


def _post(port: int, path: str, body: bytes,
          headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _raw_exchange(port: int, data: bytes, *, shut_write: bool = False) -> bytes:
    """Send raw bytes, read the answer until the server closes or 10 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and not shut_write:
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
        return b"".join(chunks)


def _status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _state(h: Harness, config: Config, *,
           admit: Callable[[], str | None] = lambda: None) -> HandoffState:
    """A second server's state over the harness's engine (its own signals, log and ids)."""
    return HandoffState(config=config, relay=h.parts.engine, signals=HandlerSignals(),
                        logger=JsonLogger(stream=io.StringIO()), ids=IdSource(), started=0.0,
                        idempotency=IdempotencyCache(), admit=admit)


@contextmanager
def _second_server(h: Harness, **options: float) -> Iterator[HandoffServer]:
    """Another handoff server over the same engine, with test-sized timeouts and caps."""
    server = HandoffServer(_state(h, h.config._replace(port=free_port())),
                           **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("records", [10, 400], ids=["small", "mapped"])
def test_a_body_shorter_than_content_length_is_rejected_and_accepts_nothing(
    broker: Broker, tmp_path: Path, records: int
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        body = b"\n".join(json.dumps({"key": f"k{i}", "value": "v" * 1024}).encode()
                          for i in range(records))
        assert (len(body) >= MAPPED_BODY_BYTES) == (records == 400)
        cut = body[: len(body) // 2]
        head = (f"POST /v1/records HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                f"Content-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n")
        answer = _raw_exchange(h.config.port, head.encode() + cut, shut_write=True)
        assert _status_of(answer) == 400
        assert b"announced" in answer
        assert h.parts.engine.gauge().counts["accepted"] == 0


@pytest.mark.parametrize("content_type", ["application/json", FRAMES_TYPE])
def test_a_body_read_into_its_own_mapping_arrives_byte_identical(
    broker: Broker, tmp_path: Path, content_type: str
) -> None:
    topic = broker.create_topic()
    items = [{"key": f"k{i}", "value": {"i": i, "pad": "\u00e9" * 700}} for i in range(300)]
    body = (encode_frames(items) if content_type == FRAMES_TYPE
            else json.dumps({"records": items}).encode())
    assert len(body) >= MAPPED_BODY_BYTES
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        status, answer = _post(h.config.port, RECORDS_PATH, body,
                               {TOKEN_HEADER: TOKEN, "Content-Type": content_type})
        assert (status, answer["accepted"]) == (202, 300)
        got = broker.read(topic, expected=300)
    assert sorted((r.key, r.value) for r in got) == sorted(
        (f"k{i}".encode(), encode_value(items[i]["value"])) for i in range(300))


def test_a_chunked_body_is_decoded_and_accepted(broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    with running_relay(broker.bootstrap, tmp_path, default_topic=topic) as h:
        body = _body(3)
        chunks = b"".join(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
                          for part in (body[:10], body[10:25], body[25:]))
        head = (f"POST /v1/records HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer = _raw_exchange(h.config.port, head.encode() + chunks + b"0\r\n\r\n")
        assert _status_of(answer) == 202
        assert h.client.flush()["remaining"] == 0
    assert len(broker.read(topic, expected=3)) == 3


def test_a_malformed_chunked_body_is_400_and_accepts_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        head = (f"POST /v1/records HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n")
        answer = _raw_exchange(h.config.port, head.encode() + b"zz\r\n{}\r\n0\r\n\r\n")
        assert _status_of(answer) == 400
        assert h.parts.engine.gauge().counts["accepted"] == 0


@pytest.mark.parametrize("path", ["/v1/invocation/end", "/v1/flush", "/v1/nowhere"])
def test_every_route_limits_its_body(broker: Broker, tmp_path: Path, path: str) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        status, reply = _post(h.config.port, path, b"x" * 1_000_000, _JSON)
        assert status == 413
        assert "limit" in str(reply["error"])


def test_json_nested_too_deep_is_400_and_the_connection_stays_usable(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        conn = http.client.HTTPConnection("127.0.0.1", h.config.port, timeout=30)
        deep = b'{"records": [{"key": "k", "value": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}"
        conn.request("POST", "/v1/records", body=deep, headers=_JSON)
        response = conn.getresponse()
        assert response.status == 400
        assert b"nested too deeply" in response.read()
        conn.request("POST", "/v1/records", body=_body(), headers=_JSON)
        again = conn.getresponse()
        assert again.status == 202
        again.read()
        conn.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    broker: Broker, tmp_path: Path
) -> None:
    with (running_relay(broker.bootstrap, tmp_path, default_topic="t") as h,
          _second_server(h, idle_timeout_s=0.2) as server,
          socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle):
        assert idle.recv(1) == b""  # closed by the server, well before our 10 s timeout


def test_past_the_connection_cap_idle_connections_make_room_for_the_handler(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h, \
            _second_server(h, max_connections=8) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
                for _ in range(40)]
        try:
            client = RelayClient(env={}, port=server.port, token=TOKEN)
            assert client.send([{"key": "k", "value": 1}]).accepted == 1
            client.close()
            assert idle[0].recv(1) == b""  # the oldest idle connection was closed
        finally:
            for sock in idle:
                sock.close()


def test_64_concurrent_senders_are_all_accepted(broker: Broker, tmp_path: Path) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t",
                       flush=FlushStrategy.parse("shutdown")) as h:
        results: list[int] = []
        barrier = threading.Barrier(64)

        def send(n: int) -> None:
            client = RelayClient(env={}, port=h.config.port, token=TOKEN)
            barrier.wait(timeout=30)
            results.append(client.send([{"key": f"k{n}", "value": n}]).accepted)
            client.close()

        threads = [threading.Thread(target=send, args=(n,)) for n in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == [1] * 64
        assert h.parts.engine.gauge().counts["accepted"] == 64


def test_a_repeated_idempotency_key_gets_the_first_answer_and_accepts_nothing_more(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t",
                       flush=FlushStrategy.parse("shutdown")) as h:
        headers = {**_JSON, IDEMPOTENCY_KEY_HEADER: "key-1"}
        first = _post(h.config.port, "/v1/records", _body(3), headers)
        again = _post(h.config.port, "/v1/records", _body(3), headers)
        assert first[0] == again[0] == 202
        assert first[1]["ids"] == again[1]["ids"]
        assert h.parts.engine.gauge().counts["accepted"] == 3
        other = _post(h.config.port, "/v1/records", _body(3, start=9), headers)
        assert other[0] == 422
        fresh = _post(h.config.port, "/v1/records", _body(3),
                      {**_JSON, IDEMPOTENCY_KEY_HEADER: "key-2"})
        assert fresh[0] == 202
        assert h.parts.engine.gauge().counts["accepted"] == 6


def test_concurrent_repeats_of_one_key_accept_once(broker: Broker, tmp_path: Path) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t",
                       flush=FlushStrategy.parse("shutdown")) as h:
        headers = {**_JSON, IDEMPOTENCY_KEY_HEADER: "same"}
        answers: list[tuple[int, dict[str, Any]]] = []
        threads = [threading.Thread(target=lambda: answers.append(
            _post(h.config.port, "/v1/records", _body(50), headers))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [status for status, _ in answers] == [202] * 8
        assert len({json.dumps(reply["ids"]) for _, reply in answers}) == 1
        assert h.parts.engine.gauge().counts["accepted"] == 50


def test_wait_delivered_uses_the_requests_own_timeout(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    proxy = proxied_broker.proxy
    with running_relay(proxy.address, tmp_path, default_topic="t",
                       flush=FlushStrategy.parse("shutdown")) as h:
        proxy.pause()  # reached at init, then silent: records wait for outcomes
        try:
            status, reply = _post(h.config.port, "/v1/records?wait=delivered&timeout_ms=100",
                                  _body(2), _JSON)
        finally:
            proxy.resume()
        assert status == 200
        assert [o["outcome"] for o in reply["outcomes"]] == ["pending", "pending"]


def test_a_wait_while_the_broker_never_answered_is_refused_at_once_naming_it(
    tmp_path: Path,
) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    with running_relay(unreachable, tmp_path, default_topic="t", init_probe_ms=100,
                       flush=FlushStrategy.parse("shutdown")) as h:
        started = time.monotonic()
        status, reply = _post(h.config.port, "/v1/records?wait=delivered&timeout_ms=20000",
                              _body(2), _JSON)
        waited_s = time.monotonic() - started
        kept_status, kept = _post(h.config.port, "/v1/records", _body(1), _JSON)

    assert status == 503
    assert waited_s < WAIT_PROBE_S + 1.0, "the probe's time, not the request's 20 s"
    assert reply["broker"]["state"] == "unreachable since init"
    assert reply["error"].startswith(f"kafka-relay cannot reach Kafka at {unreachable} ")
    assert "nothing was accepted" in reply["error"]
    assert "ids" not in reply
    assert (kept_status, kept["accepted"]) == (202, 1), "without wait it keeps the records"


def test_a_port_in_use_is_an_init_error_naming_kafka_relay_port(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h, \
            pytest.raises(PortInUseError, match="KAFKA_RELAY_PORT"):
        HandoffServer(_state(h, h.config))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind low ports")
def test_a_privileged_port_is_an_init_error_naming_kafka_relay_port(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h, \
            pytest.raises(ConfigError, match="KAFKA_RELAY_PORT=80"):
        HandoffServer(_state(h, h.config._replace(port=80)))


def test_an_address_it_cannot_bind_is_an_init_error_naming_kafka_relay_port(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h, \
            pytest.raises(ConfigError, match="KAFKA_RELAY_PORT"):
        # TEST-NET-1: not an address of this host (nothing is sent, the bind fails)
        HandoffServer(_state(h, h.config), host="192.0.2.1")


def test_a_batch_larger_than_the_whole_buffer_is_413_naming_the_limit_and_never_429(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t",
                       flush=FlushStrategy.parse("shutdown"), max_buffer_records=5) as h:
        status, reply = _post(h.config.port, "/v1/records", _body(6), _JSON)
        assert status == 413
        assert reply["refusal"] == "too_large"
        assert "6 records > the 5-record limit (KAFKA_RELAY_MAX_BUFFER_RECORDS)" in reply["error"]
        with pytest.raises(BatchTooLarge, match="KAFKA_RELAY_MAX_BUFFER_RECORDS"):
            h.client.send([{"key": f"k{i}", "value": i} for i in range(6)])
        assert len(h.log_events("handoff.rejected")) == 0
        assert h.parts.engine.gauge().counts["accepted"] == 0
        assert _post(h.config.port, "/v1/records", _body(5), _JSON)[0] == 202


@pytest.mark.parametrize("timeout_ms", ["-1", "1.5", "abc", "900001", "1" * 40, ""])
def test_a_bad_timeout_ms_is_400_and_accepts_nothing(
    broker: Broker, tmp_path: Path, timeout_ms: str
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t",
                       flush=FlushStrategy.parse("shutdown")) as h:
        for path in (f"/v1/records?wait=delivered&timeout_ms={timeout_ms}",
                     f"/v1/records?timeout_ms={timeout_ms}", f"/v1/flush?timeout_ms={timeout_ms}"):
            status, reply = _post(h.config.port, path, _body(2), _JSON)
            assert status == 400, path
            assert "timeout_ms" in reply["error"]
        assert h.parts.engine.gauge().counts["accepted"] == 0


def test_a_chunk_size_that_lies_is_answered_within_the_body_deadline(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h, \
            _second_server(h, body_deadline_s=1.0) as server:
        body = _body(3)
        lie = f"{len(body) + 10:x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        head = (f"POST /v1/records HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        started = time.monotonic()
        answer = _raw_exchange(server.port, head.encode() + lie)
        assert time.monotonic() - started < 5
        assert _status_of(answer) == 408
        assert h.parts.engine.gauge().counts["accepted"] == 0


def test_before_a_snapstart_restore_the_client_gets_relay_not_restored(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        server = HandoffServer(_state(h, h.config._replace(port=free_port()),
                                      admit=lambda: "not restored yet"))
        server.start()
        try:
            client = RelayClient(env={}, port=server.port, token=TOKEN)
            with pytest.raises(RelayNotRestored, match=r"SnapStart.*not restored yet"):
                client.send([{"key": "k", "value": 1}])
            client.close()
        finally:
            server.stop()
        assert h.parts.engine.gauge().counts["accepted"] == 0


def test_the_bodiless_end_call_is_answered_byte_for_byte_as_one_with_a_body(
    broker: Broker, tmp_path: Path
) -> None:
    with running_relay(broker.bootstrap, tmp_path, default_topic="t") as h:
        signals = h.parts.mode.signals
        assert isinstance(signals, HandlerSignals)
        head = (f"POST /v1/invocation/end HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
                "Connection: close\r\n")
        by_header = _raw_exchange(h.config.port, (
            head + 'X-Kafka-Relay-Request-Id: r-"A\r\nContent-Length: 0\r\n\r\n').encode())
        body = json.dumps({"request_id": 'r-"B'}).encode()
        by_body = _raw_exchange(h.config.port, (
            head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        assert by_header.endswith(b'{"ok":true,"request_id":"r-\\"A"}')
        assert by_header.replace(b'\\"A', b'\\"B') == by_body
        assert signals.wait('r-"A', 5)  # signalled after the answer
        assert signals.wait('r-"B', 5)
        refused = _raw_exchange(h.config.port, b"POST /v1/invocation/end HTTP/1.1\r\nHost: x"
                                b"\r\nX-Kafka-Relay-Request-Id: r-3\r\nConnection: close\r\n\r\n")
        assert _status_of(refused) == 401
        assert not signals.wait("r-3", 0)
