"""The decorator's end call, every invocation: one bodiless POST that, on a recently used
connection, does not wait for its answer; the answer is read before that connection's next
request, so no request ever gets another's answer and a refusal is still reported."""

from __future__ import annotations

import json
import threading
import time

import pytest

from kafka_relay.client import RelayClient
from kafka_relay.protocol import (
    IDEMPOTENCY_KEY_HEADER,
    INVOCATION_END_PATH,
    REQUEST_ID_HEADER,
    RelayError,
)
from tests.fake_relay import Reply, Seen, accept, fake_relay
from tests.threads import in_threads

RECORDS = [{"key": f"k{i}", "value": {"i": i}} for i in range(3)]
ENDED = Reply(200, {"ok": True})


def _ends(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.path == INVOCATION_END_PATH]


def test_the_end_call_returns_before_its_answer_and_the_next_request_gets_its_own() -> None:
    released = threading.Event()

    def script(seen: Seen, _index: int) -> Reply:
        if seen.path == INVOCATION_END_PATH:
            released.wait(10)  # the extension answers late
            return ENDED
        return accept(seen)

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port)
        client.request_id = "req-1"
        client.send(RECORDS)
        started = time.monotonic()
        client.invocation_end()
        returned_s = time.monotonic() - started
        released.set()
        result = client.send(RECORDS[:2])
        (end,) = _ends(relay.seen)
    assert returned_s < 5  # it did not wait for the held answer
    assert result.ids == ["id-0", "id-1"]  # not the end call's answer
    assert (end.method, end.headers[REQUEST_ID_HEADER], end.body) == ("POST", "req-1", b"")


def test_an_end_call_refused_is_reported_when_its_answer_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def script(seen: Seen, _index: int) -> Reply:
        if seen.path == INVOCATION_END_PATH:
            return Reply(401, {"error": "wrong token"})
        return accept(seen)

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port)
        client.send(RECORDS)
        client.invocation_end()
        assert client.send(RECORDS).accepted == 3
    (line,) = capsys.readouterr().err.splitlines()
    warning = json.loads(line)
    assert warning["event"] == "kafka_relay.end_failed"
    assert "refused this client's token (wrong token)" in warning["error"]


def test_after_an_end_answer_that_closes_the_connection_the_next_request_takes_a_new_one(
) -> None:
    def script(seen: Seen, _index: int) -> Reply:
        if seen.path == INVOCATION_END_PATH:
            return Reply(200, {"ok": True}, close=True)
        return accept(seen)

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port)
        client.send(RECORDS)
        client.invocation_end()
        assert client.send(RECORDS).ids == ["id-0", "id-1", "id-2"]
        requests = relay.records_requests()
    assert len(requests) == 2  # sent once: the closing connection was not used for it


@pytest.mark.parametrize("clock_moves_s", [60.0, -5.0], ids=["idle-a-minute", "clock-went-back"])
def test_an_end_call_on_a_connection_idle_for_long_waits_for_its_answer(
    clock_moves_s: float,
) -> None:
    """The extension closes connections idle for a minute: on one idle for long (or for how
    long no one knows) the end call could be lost unseen, so it waits for the answer and
    raises what it says."""
    now = [100.0]

    def script(seen: Seen, _index: int) -> Reply:
        if seen.path == INVOCATION_END_PATH:
            return Reply(401, {"error": "wrong token"})
        return accept(seen)

    with fake_relay(script) as relay:
        client = RelayClient(env={}, port=relay.port, clock=lambda: now[0])
        client.send(RECORDS)
        now[0] += clock_moves_s
        with pytest.raises(RelayError, match="refused this client's token"):
            client.invocation_end()


def test_threads_ending_and_sending_on_shared_connections_get_their_own_answers() -> None:
    def echo(seen: Seen, _index: int) -> Reply:
        if seen.path == INVOCATION_END_PATH:
            return ENDED
        key = seen.headers[IDEMPOTENCY_KEY_HEADER]
        return Reply(202, {"ids": [f"{key}:{r['value']}" for r in seen.records()]})

    threads, rounds = 6, 30
    wrong: list[str] = []

    with fake_relay(echo) as relay:
        client = RelayClient(env={}, port=relay.port)

        def work(n: int) -> None:
            for m in range(rounds):
                (record_id,) = client.send([{"value": f"{n}-{m}"}]).ids
                if not record_id.endswith(f":{n}-{m}"):
                    wrong.append(record_id)
                client.invocation_end(f"req-{n}-{m}")

        errors = in_threads(work, threads, timeout_s=60)
        deadline = time.monotonic() + 10  # the last end calls may still be on their way
        while len(_ends(relay.seen)) < threads * rounds and time.monotonic() < deadline:
            time.sleep(0.01)
        ends = _ends(relay.seen)
    assert (errors, wrong) == ([], [])
    assert len(relay.records_requests()) == threads * rounds
    assert sorted(e.headers[REQUEST_ID_HEADER] for e in ends) == sorted(
        f"req-{n}-{m}" for n in range(threads) for m in range(rounds))


def test_a_handler_that_never_sends_records_owes_at_most_one_answer_per_connection() -> None:
    with fake_relay(lambda _seen, _index: ENDED) as relay:
        client = RelayClient(env={}, port=relay.port)
        client.status()
        for n in range(300):
            client.invocation_end(f"req-{n}")
        owed = [conn.owed for conn in client._transport._idle]
        client.status()  # reads the last answer owed
        ends = _ends(relay.seen)
    assert owed == [1]
    assert [e.headers[REQUEST_ID_HEADER] for e in ends] == [f"req-{n}" for n in range(300)]
