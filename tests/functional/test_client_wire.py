"""The client against a scripted handoff server on loopback: idempotent retries, per-call
time from the invocation, back-off on 429, clear errors, no interleaving between threads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.kafka_broker import free_port
from kafka_relay.client import _MARGIN_S, _MAX_BUSY_S, _MAX_IDLE, RelayClient, SendResult
from kafka_relay.httpconn import Connection
from kafka_relay.protocol import (
    IDEMPOTENCY_KEY_HEADER,
    REFUSAL_FIELD,
    BatchTooLarge,
    RecordRejected,
    Refusal,
    RelayBusy,
    RelayError,
    RelayNotRestored,
    RelayShuttingDown,
    RelayStorageUnavailable,
    RelayUnavailable,
)
from tests.fake_relay import DROP, Hold, Reply, Seen, accept, fake_relay
from tests.threads import in_threads

RECORDS = [{"key": f"k{i}", "value": {"i": i}} for i in range(3)]


class Context:
    aws_request_id = "req-1"

    def __init__(self, remaining_ms: Callable[[], float]) -> None:
        self.get_remaining_time_in_millis = remaining_ms


def _keys(requests: list[Seen]) -> list[str]:
    return [r.headers[IDEMPOTENCY_KEY_HEADER] for r in requests]


def test_a_dropped_answer_is_retried_with_the_same_idempotency_key() -> None:
    def script(seen: Seen, index: int) -> Reply | str:
        return DROP if index == 0 else accept(seen)  # read the request, then died

    with fake_relay(script) as relay:
        result = RelayClient(env={}, port=relay.port).send(RECORDS)
        first, second = relay.records_requests()
    assert result == SendResult(3, ["id-0", "id-1", "id-2"])
    assert first.headers[IDEMPOTENCY_KEY_HEADER] == second.headers[IDEMPOTENCY_KEY_HEADER]
    assert first.body == second.body


def test_a_read_timeout_is_retried_with_the_same_idempotency_key() -> None:
    released = threading.Event()

    def script(seen: Seen, index: int) -> Reply | Hold:
        if index == 0:
            return Hold(released)  # the client gives up reading this one
        released.set()
        return accept(seen)

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port, attempt_timeout_s=1.0)
        assert client.send(RECORDS).accepted == 3
        keys = _keys(relay.records_requests())
    assert len(keys) == 2
    assert keys[0] == keys[1]


def test_connections_that_died_while_frozen_are_replaced_not_counted_as_unavailable() -> None:
    with fake_relay(lambda seen, _i: accept(seen)) as relay:
        client = RelayClient(env={}, port=relay.port)
        for _ in range(_MAX_IDLE):  # kept-alive connections whose peer went away
            ours, theirs = socket.socketpair()
            theirs.close()
            stale = Connection(f"127.0.0.1:{relay.port}")
            stale._sock.close()
            stale._sock = ours
            client._transport._idle.append(stale)
        assert client.send(RECORDS).accepted == 3
        assert len(relay.records_requests()) == 1


def test_every_logical_request_has_its_own_key_and_batches_of_a_send_too() -> None:
    with fake_relay(lambda seen, _i: accept(seen)) as relay:
        client = RelayClient(env={}, port=relay.port)
        client.send(RECORDS)
        client.send([{"value": i} for i in range(1500)])  # two batches
        keys = _keys(relay.records_requests())
    assert len(keys) == 3
    assert len(set(keys)) == 3


def test_wait_tells_the_extension_how_long_the_invocation_has_left() -> None:
    def script(seen: Seen, _index: int) -> Reply:
        ids = [f"id-{n}" for n in range(len(seen.records()))]
        return Reply(200, {"ids": ids, "outcomes": [{"id": i, "outcome": "delivered"}
                                                    for i in ids]})

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port)
        client.begin(Context(lambda: 5000))
        result = client.send(RECORDS, wait=True)
        (seen,) = relay.records_requests()
    assert result.count("delivered") == 3
    assert seen.headers["X-Kafka-Relay-Request-Id"] == "req-1"
    path, _, query = seen.path.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    assert (path, params["wait"]) == ("/v1/records", "delivered")
    # 5 s left, minus the client's margins; never the server's guess of the deadline
    assert 4000 < int(params["timeout_ms"]) <= 4550


def test_429_backs_off_as_told_then_succeeds_with_a_new_key() -> None:
    pauses: list[float] = []

    def script(seen: Seen, index: int) -> Reply:
        if index < 2:
            return Reply(429, {"error": "buffer full", "retry_after_ms": 300},
                         {"Retry-After": "1"})
        return accept(seen)

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port, sleep=pauses.append)
        assert client.send(RECORDS).accepted == 3
        keys = _keys(relay.records_requests())
    assert pauses == [0.3, 0.3]
    assert len(set(keys)) == 3  # a 429 took nothing: the next try is a new request


def _busy_client(relay_port: int, remaining_ms: float) -> tuple[RelayClient, list[float]]:
    """A client on a fake clock that only sleeps move; the list holds the clock."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    client = RelayClient(env={}, port=relay_port, clock=lambda: now[0], sleep=sleep)
    client.begin(Context(lambda: remaining_ms - now[0] * 1000))
    return client, now


def test_a_buffer_that_stays_full_is_relay_busy_within_a_second_however_long_is_left() -> None:
    def full(_seen: Seen, _index: int) -> Reply:
        return Reply(429, {"error": "buffer full (100000 records)", "retry_after_ms": 250})

    with fake_relay(full) as relay:
        client, now = _busy_client(relay.port, remaining_ms=60_000)
        with pytest.raises(RelayBusy, match=r"buffer stayed full.*NOT accepted.*MAX_BUFFER"):
            client.send(RECORDS)
        tries = len(relay.records_requests())
    assert tries == 4  # at 0, 0.25, 0.5 and 0.75 s; the next pause would pass 0.8 s
    assert now[0] == 0.75


def test_a_retry_after_past_the_busy_bound_is_relay_busy_after_one_try() -> None:
    # The extension's answer while Kafka is away: room will not come within the bound.
    def gone(_seen: Seen, _index: int) -> Reply:
        return Reply(429, {"error": "buffer full; Kafka is not answering",
                           "retry_after_ms": 2000}, {"Retry-After": "2"})

    with fake_relay(gone) as relay:
        client, now = _busy_client(relay.port, remaining_ms=60_000)
        with pytest.raises(RelayBusy, match=r"Kafka is not answering"):
            client.send(RECORDS)
        tries = len(relay.records_requests())
    assert (tries, now[0]) == (1, 0.0)


@settings(max_examples=25, deadline=None)
@given(retry_after_ms=st.integers(min_value=0, max_value=5_000),
       remaining_ms=st.integers(min_value=300, max_value=900_000))  # > the client's margin
def test_backing_off_on_a_full_buffer_never_passes_the_bound_or_the_remaining_time(
    retry_after_ms: int, remaining_ms: int
) -> None:
    def full(_seen: Seen, _index: int) -> Reply:
        return Reply(429, {"error": "buffer full", "retry_after_ms": retry_after_ms})

    with fake_relay(full) as relay:
        client, now = _busy_client(relay.port, remaining_ms=remaining_ms)
        with pytest.raises(RelayBusy):
            client.send(RECORDS)
        assert len(relay.records_requests()) >= 1
    assert now[0] <= min(_MAX_BUSY_S, max(0.0, remaining_ms / 1000 - _MARGIN_S))


@pytest.mark.parametrize(
    ("status", "error", "kind", "message"),
    [
        (503, RelayShuttingDown, RelayBusy, r"shutting down.*NOT accepted.*next invocation"),
        (401, RelayError, RelayError, r"refused this client's token.*KAFKA_RELAY_TOKEN"),
        (500, RelayError, RelayError, r"answered 500: the server's own words"),
    ],
)
def test_error_statuses_raise_clear_errors(
    status: int, error: type[Exception], kind: type[Exception], message: str
) -> None:
    def script(_seen: Seen, _index: int) -> Reply:
        return Reply(status, {"error": "the server's own words"})

    with fake_relay(script) as relay, pytest.raises(error, match=message) as caught:
        RelayClient(env={}, port=relay.port).send(RECORDS)
    assert isinstance(caught.value, kind)


@pytest.mark.parametrize(
    ("status", "refusal", "error", "kind", "message"),
    [
        (413, Refusal.TOO_LARGE, BatchTooLarge, RecordRejected,
         r"too large.*retrying it as it is cannot help"),
        (503, Refusal.NOT_RESTORED, RelayNotRestored, RelayBusy,
         r"not been restored from its SnapStart snapshot.*from the handler"),
        (503, Refusal.CLOSED, RelayShuttingDown, RelayBusy, r"shutting down"),
    ],
)
def test_refusals_that_retrying_cannot_help_are_raised_after_one_try(
    status: int, refusal: Refusal, error: type[Exception], kind: type[Exception], message: str
) -> None:
    def script(_seen: Seen, _index: int) -> Reply:
        return Reply(status, {"error": "the server's own words", REFUSAL_FIELD: refusal.value})

    with fake_relay(script) as relay, pytest.raises(error, match=message) as caught:
        RelayClient(env={}, port=relay.port).send(RECORDS)
    assert isinstance(caught.value, kind)
    assert len(relay.records_requests()) == 1


def test_a_disk_that_stays_unwritable_is_backed_off_then_relay_storage_unavailable() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def unwritable(_seen: Seen, _index: int) -> Reply:
        return Reply(507, {"error": "journal cannot write", "retry_after_ms": 300,
                           REFUSAL_FIELD: Refusal.STORAGE.value})

    with fake_relay(unwritable) as relay:
        client = RelayClient(env={}, port=relay.port, clock=lambda: now[0], sleep=sleep)
        client.begin(Context(lambda: 2500))
        with pytest.raises(RelayStorageUnavailable, match=r"could not write to its disk"):
            client.send(RECORDS)
        assert len(relay.records_requests()) == 3  # at 0, 0.3 and 0.6 s (then past 0.8 s)


def test_a_value_nested_too_deep_for_any_encoder_is_record_rejected_naming_it() -> None:
    deep: object = 1
    for _ in range(2_000):
        deep = [deep]
    with fake_relay(lambda seen, _index: accept(seen)) as relay, \
            pytest.raises(RecordRejected, match="record 1") as caught:
        RelayClient(env={}, port=relay.port).send([{"value": 1}, {"value": deep}])
    assert caught.value.reasons == [{"index": 1, "reason": "'value' is nested too deeply or "
                                                           "refers to itself"}]
    assert relay.records_requests() == []


def test_nobody_listening_is_relay_unavailable_naming_the_fix() -> None:
    with pytest.raises(RelayUnavailable, match="KAFKA_RELAY_FALLBACK=direct"):
        RelayClient(env={}, port=free_port()).send(RECORDS)


def test_threads_sharing_one_client_never_get_each_others_answers() -> None:
    def echo(seen: Seen, _index: int) -> Reply:
        # ids carry the request's key: an answer read by the wrong thread shows
        key = seen.headers[IDEMPOTENCY_KEY_HEADER]
        values = [r["value"] for r in seen.records()]
        return Reply(202, {"ids": [f"{key}:{v}" for v in values]})

    threads, sends = 8, 40
    results: dict[int, list[tuple[str, SendResult]]] = {}

    with fake_relay(echo) as relay:
        client = RelayClient(env={}, port=relay.port)

        def work(n: int) -> None:
            results[n] = [(f"{n}-{m}", client.send([{"value": f"{n}-{m}"}]))
                          for m in range(sends)]

        errors = in_threads(work, threads, timeout_s=60)
        requests = relay.records_requests()
    assert errors == []
    assert len(requests) == threads * sends  # no retries, no duplicates
    for pairs in results.values():
        for value, result in pairs:
            (record_id,) = result.ids
            assert record_id.endswith(f":{value}")
    assert len({r.ids[0].split(":")[0] for p in results.values() for _, r in p}) == threads * sends


def test_the_process_wide_client_is_created_once_under_concurrent_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kafka_relay.client as client_module  # noqa: PLC0415 - its module state is the subject

    monkeypatch.setattr(client_module, "_default", None)
    made: list[Any] = []
    barrier = threading.Barrier(8)

    def first_use(_n: int) -> None:
        barrier.wait(10)
        made.append(client_module.default_client())

    assert in_threads(first_use, 8, timeout_s=10) == []
    assert len(made) == 8
    assert len({id(c) for c in made}) == 1
