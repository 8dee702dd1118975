"""The pump's bookkeeping in bulk: a batch taken by running sums instead of record by record,
delivery reports noted per record and settled per round, keys and values dropped in the same
lock round. Whatever order reports, failures, full queues, rebuilds and spills come in, every
accepted record settles exactly once, and what reached Kafka is what was accepted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.delivery.queue import SendQueue
from kafka_relay.protocol import ID_HEADER
from kafka_relay.record import Record
from tests.unit.engine_fakes import FakeProducer, Rig, Sent


def _take_one_by_one(sizes: list[int], in_flight: int, in_flight_bytes: int, limit: int,
                     max_bytes: int) -> int:
    """The rule as stated record by record: how many of ``sizes`` a round takes."""
    taken = 0
    for size in sizes[:limit]:
        if (in_flight_bytes + size > max_bytes and size <= max_bytes
                and (taken or in_flight)):
            break
        taken += 1
        in_flight_bytes += size
    return taken


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=40),
       in_flight=st.integers(min_value=0, max_value=3),
       in_flight_bytes=st.integers(min_value=0, max_value=400),
       limit=st.integers(min_value=1, max_value=50),
       max_bytes=st.integers(min_value=1, max_value=250))
def test_a_round_takes_what_the_record_by_record_window_rule_takes(
    sizes: list[int], in_flight: int, in_flight_bytes: int, limit: int, max_bytes: int,
) -> None:
    queue = SendQueue()
    records = [Record(f"r{n}", "t", None, b"v" * size) for n, size in enumerate(sizes)]
    queue.push_all(records)
    queue.in_flight, queue.in_flight_bytes = in_flight, in_flight_bytes
    batch = queue.take_due(0, limit, max_bytes)
    expected = _take_one_by_one(sizes, in_flight, in_flight_bytes, limit, max_bytes)
    assert batch == records[:expected]
    assert list(queue.fresh) == records[expected:]
    assert queue.in_flight == in_flight + expected
    assert queue.in_flight_bytes == in_flight_bytes + sum(sizes[:expected])


_DELIVERED = None
_TRANSIENT = KafkaError._MSG_TIMED_OUT
_PERMANENT = KafkaError.INVALID_RECORD
_OVERSIZE = KafkaError.MSG_SIZE_TOO_LARGE
_FATAL = KafkaError.PRODUCER_FENCED

_answer = st.sampled_from([_DELIVERED, _DELIVERED, _TRANSIENT, _PERMANENT, _OVERSIZE, _FATAL])
_record = st.tuples(st.one_of(st.none(), st.binary(max_size=8)), st.binary(max_size=48),
                    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.binary(max_size=4)),
                             max_size=2))
_action = st.one_of(
    st.tuples(st.just("accept"), st.lists(_record, min_size=1, max_size=12), st.booleans()),
    st.tuples(st.just("step"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("hold"), st.booleans()),
    st.tuples(st.just("answers"), st.lists(_answer, min_size=1, max_size=6)),
    st.tuples(st.just("capacity"), st.integers(min_value=0, max_value=8)),
    st.tuples(st.just("wait"), st.integers(min_value=0, max_value=40_000)),
    st.tuples(st.just("spill"),),
)


class _Broker:
    """Answers each produced record with the next of ``answers``, cycling; keeps what it took."""

    def __init__(self) -> None:
        self.answers: list[int | None] = [_DELIVERED]
        self.turn = 0
        self.took: list[Sent] = []

    def respond(self, sent: Sent) -> KafkaError | None:
        code = self.answers[self.turn % len(self.answers)]
        self.turn += 1
        if code is None:
            self.took.append(sent)
            return None
        return KafkaError(code, fatal=code == _FATAL)


@settings(max_examples=120, deadline=None)
@given(actions=st.lists(_action, min_size=1, max_size=30))
def test_any_interleaving_of_reports_failures_and_spills_settles_every_record_exactly_once(
    actions: list[tuple[Any, ...]],
) -> None:
    broker = _Broker()
    state: dict[str, Any] = {"hold": False, "capacity": 1_000}

    def producer() -> FakeProducer:
        return FakeProducer(respond=broker.respond, hold=state["hold"],
                            capacity=state["capacity"])

    with TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), producer=producer)
        accepted: dict[str, Record] = {}
        for action in actions:
            kind = action[0]
            if kind == "accept":
                records = [Record(f"r{len(accepted) + n}", "t", key, value, tuple(headers),
                                  request_id=f"req-{len(accepted) % 3}")
                           for n, (key, value, headers) in enumerate(action[1])]
                originals = [Record(r.id, r.topic, r.key, r.value, r.headers) for r in records]
                rig.engine.accept(records, watch=action[2])
                accepted.update((r.id, r) for r in originals)
            elif kind == "step":
                rig.step(action[1])
            elif kind == "hold":
                state["hold"] = rig.producer.hold = action[1]
            elif kind == "answers":
                broker.answers = action[1]
            elif kind == "capacity":
                state["capacity"] = rig.producer.capacity = action[1]
            elif kind == "wait":
                rig.clock.advance(action[1])
            else:
                rig.engine.spill_unsettled("a drain")
            rig.assert_accounted()
        broker.answers = [_DELIVERED]
        state["hold"], state["capacity"] = False, 1_000
        for _ in range(200):  # bounded: every backoff is past after a few minutes
            rig.producer.hold, rig.producer.capacity = False, 1_000
            rig.clock.advance(60_000)
            rig.step()
            if not rig.engine.gauge().pending and not rig.producer.waiting:
                break
        rig.assert_accounted()
        assert rig.engine.gauge().pending == 0
        assert rig.engine.status()["in_flight"] == 0

        outcomes = [(e["id"], e["outcome"]) for e in rig.events("record.outcome")]
        settled = Counter(record_id for record_id, _ in outcomes)
        assert settled == Counter(list(accepted)), "each accepted record settles exactly once"
        counts = rig.counts()
        by_outcome = Counter(outcome for _, outcome in outcomes)
        assert by_outcome["delivered"] == counts["delivered"]
        assert by_outcome["dead_lettered"] == counts["dead_lettered"]
        assert (counts["delivered"] + counts["dead_lettered"] + counts["spilled"]
                + counts["spooled"]) == len(accepted)

        # What the broker took under each id, on the record's topic and on its DLQ.
        took: dict[tuple[bool, str], list[Sent]] = {}
        for message in broker.took:
            took.setdefault((message.topic == "t", message.relay_id), []).append(message)
        for record_id, outcome in outcomes:
            if outcome not in ("delivered", "dead_lettered"):
                continue
            original = accepted[record_id]
            delivered = outcome == "delivered"
            caller_headers = list(dict(original.headers).items())
            assert any(
                (m.key, m.value) == (original.key, original.value)
                and list(m.headers.items())[:len(caller_headers) + 1]
                == [*caller_headers, (ID_HEADER, record_id.encode())]
                for m in took.get((delivered, record_id), [])), (record_id, outcome)
