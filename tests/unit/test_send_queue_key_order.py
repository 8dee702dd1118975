"""The send queue keeps each (topic, key)'s records in acceptance order across failures: a
record waiting out a backoff, put back or given back holds its key's later records back
until it goes, and goes ahead of them; other keys, and records without a key or on their
way to the DLQ, go on. Whatever the interleaving of pushes, takes, failures (with differing
backoffs and attempt counts), requeues, full queues, rebuilds, releases and time, no record
is taken after a later one of its key was taken since it failed, every record is counted
in exactly one place, and each is delivered exactly once."""

from __future__ import annotations

from itertools import count

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kafka_relay.delivery.keyorder import order_key
from kafka_relay.delivery.queue import SendQueue
from kafka_relay.delivery.routing import backoff_ms
from kafka_relay.record import Record

BIG = 10**9


def _records(keys: list[bytes | None], topic: str = "t", first: int = 0) -> list[Record]:
    return [Record(f"r{first + n}", topic, key, b"v") for n, key in enumerate(keys)]


def _ids(records: list[Record]) -> list[str]:
    return [r.id for r in records]


def test_a_keys_later_records_wait_behind_one_waiting_out_its_backoff() -> None:
    queue = SendQueue()
    first, second, third = _records([b"a", b"a", b"a"])
    queue.push_all([first, second])
    assert queue.take_due(0, 1, BIG) == [first]
    queue.schedule(first, 500)
    queue.done([first])
    queue.push(third)
    assert queue.take_due(100, 10, BIG) == []
    assert (len(queue.fresh), queue.waiting_retry(), queue.next_due_ms()) == (0, 3, 500)
    assert not queue.has_due_work(100), "held records are no work before the retry is due"
    assert queue.take_due(500, 10, BIG) == [first, second, third]
    assert queue.waiting_retry() == 0


def test_other_keys_and_records_without_a_key_are_not_held_back() -> None:
    queue = SendQueue()
    a1, b1, a2, none1, b2, none2 = _records([b"a", b"b", b"a", None, b"b", None])
    queue.push_all([a1, b1])
    assert queue.take_due(0, 2, BIG) == [a1, b1]
    queue.schedule(a1, 1_000)
    queue.done([a1, b1])
    queue.push_all([a2, none1, b2, none2])
    assert queue.take_due(0, 10, BIG) == [none1, b2, none2]
    assert queue.waiting_retry() == 2  # a1, and a2 behind it


def test_the_same_key_on_another_topic_is_another_order() -> None:
    queue = SendQueue()
    (t1,) = _records([b"a"], topic="t")
    u1, u2 = _records([b"a", b"a"], topic="u", first=1)
    queue.push_all([t1, u1])
    assert queue.take_due(0, 1, BIG) == [t1]
    queue.schedule(t1, 1_000)
    queue.done([t1])
    queue.push(u2)
    assert queue.take_due(0, 10, BIG) == [u1, u2]


def test_a_record_on_its_way_to_the_dlq_holds_nothing_back() -> None:
    queue = SendQueue()
    a1, a2 = _records([b"a", b"a"])
    queue.push(a1)
    assert queue.take_due(0, 1, BIG) == [a1]
    a1.dlq_error = "gave up after 3 attempts"
    queue.schedule(a1, 1_000)
    queue.done([a1])
    queue.push(a2)
    assert queue.take_due(0, 10, BIG) == [a2]


def test_an_earlier_record_with_the_longer_backoff_still_goes_first() -> None:
    queue = SendQueue()
    a1, a2, a3 = _records([b"a", b"a", b"a"])
    queue.push_all([a1, a2, a3])
    assert queue.take_due(0, 2, BIG) == [a1, a2]
    queue.schedule(a2, 100)  # reported first, one attempt
    queue.schedule(a1, 400)  # a longer backoff: more attempts
    queue.done([a1, a2])
    assert queue.take_due(100, 10, BIG) == []
    assert queue.next_due_ms() == 400
    assert queue.take_due(400, 10, BIG) == [a1, a2, a3]


def test_put_back_records_go_first_in_their_order_whatever_order_they_come_back_in() -> None:
    queue = SendQueue()
    a1, a2, a3, a4 = _records([b"a", b"a", b"a", b"a"])
    queue.push_all([a1, a2, a3])
    assert queue.take_due(0, 3, BIG) == [a1, a2, a3]
    queue.push(a4)
    for record in (a3, a1, a2):  # a purge reports them in any order
        queue.put_back(record)
        queue.done([record])
    assert queue.take_due(0, 10, BIG) == [a1, a2, a3, a4]


def test_after_a_rebuild_what_was_in_flight_goes_ahead_of_its_keys_later_records() -> None:
    queue = SendQueue()
    a1, a2, a3 = _records([b"a", b"a", b"a"])
    queue.push_all([a1, a2])
    assert queue.take_due(0, 2, BIG) == [a1, a2]
    queue.push(a3)
    queue.requeue_missing([a1, a2, a3])
    assert queue.in_flight == 0
    assert queue.take_due(0, 10, BIG) == [a1, a2, a3]


def test_release_sends_every_waiting_record_each_key_in_order() -> None:
    queue = SendQueue()
    a1, b1, a2, b2, a3 = _records([b"a", b"b", b"a", b"b", b"a"])
    queue.push_all([a1, b1, a2])
    assert queue.take_due(0, 3, BIG) == [a1, b1, a2]
    queue.schedule(a2, 100)
    queue.schedule(b1, 9_000)
    queue.schedule(a1, 30_000)
    queue.done([a1, b1, a2])
    queue.push_all([b2, a3])
    assert queue.take_due(0, 10, BIG) == []
    queue.release_retries()
    taken = queue.take_due(0, 10, BIG)
    assert sorted(_ids(taken)) == sorted(_ids([a1, b1, a2, b2, a3]))
    assert [r for r in taken if r.key == b"a"] == [a1, a2, a3]
    assert [r for r in taken if r.key == b"b"] == [b1, b2]


def test_a_record_given_back_by_a_full_queue_stays_behind_its_keys_waiting_one() -> None:
    queue = SendQueue()
    a1, a2, a3 = _records([b"a", b"a", b"a"])
    queue.push_all([a1, a2, a3])
    batch = queue.take_due(0, 3, BIG)
    queue.schedule(a1, 500)  # its produce raised: routed while the batch was handed over
    queue.done([a1])
    queue.give_back(batch[1:])  # librdkafka's queue was full
    assert queue.take_due(100, 10, BIG) == []
    assert queue.take_due(500, 10, BIG) == [a1, a2, a3]


def test_a_record_released_but_not_yet_taken_goes_before_its_keys_later_one_put_back() -> None:
    queue = SendQueue()
    a1, a2 = _records([b"a", b"a"])
    queue.push_all([a1, a2])
    assert queue.take_due(0, 2, BIG) == [a1, a2]
    queue.put_back(a1)
    queue.done([a1])
    queue.release_retries()  # a1 is first in fresh, not taken yet
    queue.put_back(a2)
    queue.done([a2])
    assert queue.take_due(0, 10, BIG) == [a1, a2]


class KeyOrderMachine(RuleBasedStateMachine):
    """The queue driven as the pump and routing drive it, checked against acceptance order."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = SendQueue()
        self.ids = count()
        self.accepted: list[Record] = []  # acceptance order
        self.rank: dict[str, int] = {}
        self.unsettled: dict[str, Record] = {}
        self.in_flight: list[Record] = []
        self.taken_once: set[str] = set()
        self.waiting: set[str] = set()  # failed, put back or given back: not taken since
        self.delivered: list[str] = []
        self.now = 0

    def _push(self, keys: list[tuple[str, bytes | None]]) -> list[Record]:
        records = [Record(f"r{next(self.ids)}", topic, key, b"v" * (1 + n % 3))
                   for n, (topic, key) in enumerate(keys)]
        for record in records:
            self.rank[record.id] = len(self.accepted)
            self.accepted.append(record)
            self.unsettled[record.id] = record
        return records

    def _check_taken(self, batch: list[Record]) -> None:
        for record in batch:
            assert record not in self.in_flight, f"{record.id} taken twice at once"
            key = order_key(record)
            if key is not None:
                rank = self.rank[record.id]
                overtaken = [r.id for r in self.accepted[:rank]
                             if order_key(r) == key and (r.id in self.waiting
                                                         or r.id not in self.taken_once)]
                assert not overtaken, f"{record.id} taken ahead of {overtaken}"
            self.waiting.discard(record.id)
            self.taken_once.add(record.id)
            self.in_flight.append(record)

    @rule(keys=st.lists(st.tuples(st.sampled_from(["t", "u"]),
                                  st.sampled_from([b"a", b"b", b"c", None])),
                        min_size=1, max_size=6))
    def accept(self, keys: list[tuple[str, bytes | None]]) -> None:
        records = self._push(keys)
        if len(records) == 1:
            self.queue.push(records[0])
        else:
            self.queue.push_all(records)

    @rule(limit=st.integers(min_value=1, max_value=5),
          max_bytes=st.sampled_from([2, 5, BIG]),
          refused=st.integers(min_value=0, max_value=6))
    def take(self, limit: int, max_bytes: int, refused: int) -> None:
        """A round; ``refused`` of its last records come back from a full librdkafka queue."""
        in_flight = self.queue.in_flight
        batch = self.queue.take_due(self.now, limit, max_bytes)
        self._check_taken(batch)
        if not batch and not in_flight:
            assert not self.queue.has_due_work(self.now), "work that cannot be taken: a spin"
        back = batch[len(batch) - min(refused, len(batch)):] if refused else []
        if back:
            self.queue.give_back(back)
            for record in back:
                self.in_flight.remove(record)
                self.waiting.add(record.id)

    def _out_of_flight(self, pick: int) -> Record:
        return self.in_flight.pop(pick % len(self.in_flight))

    def _delivered(self, record: Record) -> None:
        self.queue.done([record])
        del self.unsettled[record.id]
        self.delivered.append(record.id)

    @precondition(lambda self: self.in_flight)
    @rule(pick=st.integers(min_value=0), base_ms=st.sampled_from([0, 5, 20, 100]))
    def fail(self, pick: int, base_ms: int) -> None:
        """A transient failure, routed before it leaves flight (as the pump does)."""
        record = self._out_of_flight(pick)
        record.attempts += 1
        self.queue.schedule(record, self.now + backoff_ms(record.attempts, base_ms))
        self.queue.done([record])
        self.waiting.add(record.id)

    @precondition(lambda self: self.in_flight)
    @rule(pick=st.integers(min_value=0), dead_letter=st.booleans())
    def purged_or_dead_lettered(self, pick: int, dead_letter: bool) -> None:
        """Purged: put back. Dead-lettered: it leaves its key's order for the DLQ."""
        record = self._out_of_flight(pick)
        if dead_letter:
            record.dlq_error = "gave up"
            self.queue.push(record)
            self.waiting.discard(record.id)
        else:
            self.queue.put_back(record)
            self.waiting.add(record.id)
        self.queue.done([record])

    @precondition(lambda self: self.in_flight)
    @rule(pick=st.integers(min_value=0))
    def deliver(self, pick: int) -> None:
        self._delivered(self._out_of_flight(pick))

    @rule()
    def rebuild(self) -> None:
        """A new producer: what the old one held (its reports never came) goes again."""
        self.queue.requeue_missing(list(self.unsettled.values()))
        self.waiting.update(r.id for r in self.in_flight if order_key(r) is not None)
        self.in_flight.clear()

    @rule()
    def release(self) -> None:
        self.queue.release_retries()

    @rule(ms=st.sampled_from([1, 5, 20, 100, 1_000]))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @invariant()
    def every_record_is_counted_in_one_place(self) -> None:
        queue = self.queue
        assert queue.in_flight == len(self.in_flight)
        assert len(queue.fresh) + queue.waiting_retry() + queue.in_flight == len(self.unsettled)

    def teardown(self) -> None:
        self.queue.release_retries()
        for _ in range(len(self.accepted) + 1):  # bounded: each round delivers one at least
            self.deliver_all()
            if not self.unsettled:
                break
        assert sorted(self.delivered) == sorted(r.id for r in self.accepted), "each once"
        assert (self.queue.in_flight, self.queue.waiting_retry(), len(self.queue.fresh)) == (
            0, 0, 0)

    def deliver_all(self) -> None:
        self._check_taken(self.queue.take_due(self.now + 10**7, BIG, BIG))
        for record in list(self.in_flight):
            self.in_flight.remove(record)
            self._delivered(record)


KeyOrderMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=40,
                                             deadline=None)
test_any_interleaving_takes_each_keys_records_in_acceptance_order = KeyOrderMachine.TestCase
