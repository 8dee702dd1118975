"""The ring file (``kafka_relay.ring``) as a crash journal: an extension that starts over the
file finds exactly the bodies accepted and not yet settled, with the request id each was
handed over for, through wrap-around, refusals, bodies never answered and a writer killed
with SIGKILL; a ring of the earlier version (no request ids) still reads; any other bytes
read as entries or as ``ValueError``, never anything else. SHUTDOWN deletes a consumed ring
once its killed writer lets go of it, and waits only so long for one that lives on."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay import ring
from kafka_relay.delivery.rings import Rings

# (body, its request id, its answer: accepted, refused or none yet; how many of the oldest
# entries settle after it)
_STEPS = st.lists(st.tuples(st.binary(max_size=120), st.text(max_size=40),
                            st.sampled_from([ring.ACCEPTED, ring.REFUSED, 0]),
                            st.integers(0, 3)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_STEPS)
def test_a_restart_finds_the_accepted_bodies_not_yet_settled_in_order(
        steps: list[tuple[bytes, str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relay.ring"
        fd = ring.create(path, 256)  # small: most runs wrap around several times
        writer = ring.Ring(fd, path)
        os.close(fd)
        entries: list[tuple[int, str, bytes, int]] = []  # (end, request id, body, answer)
        settled = 0
        for body, request_id, answer, settling in steps:
            while True:
                try:
                    position, end = writer.append(body, request_id.encode())
                    break
                except ring.RingFull:
                    assert settled < len(entries), "full with nothing left to settle"
                    settled += 1
                    writer.settle(entries[settled - 1][0])
            if answer:
                writer.mark(position, answer)
            entries.append((end, request_id, body, answer))
            step = min(settling, len(entries) - settled)
            if step:
                settled += step
                writer.settle(entries[settled - 1][0])
        writer.close()

        restarted = ring.Ring.open(path)
        found = [(end, request_id, body) for _position, end, request_id, body
                 in ring.pending(restarted)]
        restarted.close()
    assert found == [(end, request_id or None, body) for end, request_id, body, answer
                     in entries[settled:] if answer == ring.ACCEPTED]


def test_bodies_a_killed_writer_appended_are_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.ring"
    os.close(ring.create(path, 4096))
    script = ("import os, signal, sys\n"
              "from pathlib import Path\n"
              "from kafka_relay import ring\n"
              "r = ring.Ring.open(Path(sys.argv[1]))\n"
              "for n in range(5):\n"
              "    r.append(b'body-%d' % n)\n"
              "print('appended', flush=True)\n"
              "signal.pause()\n")
    repo = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=repo / "extension",
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "appended"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL
    relay = ring.Ring.open(path)
    try:
        assert [bytes(relay.body(position, word & ring.LENGTH))
                for position, word, _end in relay.entries()] == [b"body-%d" % n
                                                                 for n in range(5)]
    finally:
        relay.close()


def _header(version: int, capacity: int, written: int, consumed: int) -> bytes:
    head = struct.pack("<4sIQQQI", ring.MAGIC, version, capacity, written, consumed, 0)
    return head + bytes(ring.HEADER - len(head))


def version_1_file(path: Path, capacity: int, entries: list[tuple[int, bytes]],
                    consumed: int = 0) -> None:
    """A ring file as version 1 wrote it: each entry a state word and the body, padded to 8."""
    data = b""
    for word, body in entries:
        data += struct.pack("<I", word | len(body)) + body
        data += bytes(-len(data) % 8)
    path.write_bytes(_header(1, capacity, len(data), consumed) + data
                     + bytes(capacity - len(data)))


def test_a_version_1_ring_is_taken_over_with_its_bodies_and_no_request_ids(
        tmp_path: Path) -> None:
    path = tmp_path / "old.ring"
    version_1_file(path, 256, [(ring.ACCEPTED, b"settled"), (ring.REFUSED, b"refused"),
                                (ring.ACCEPTED, b"pending-one"), (0, b"never answered"),
                                (ring.ACCEPTED, b"pending-two")], consumed=16)
    old = ring.Ring.open(path)
    try:
        assert old.version == ring.OLD_VERSION != ring.VERSION
        assert [(request_id, body) for _position, _end, request_id, body in ring.pending(old)] == [
            (None, b"pending-one"), (None, b"pending-two")]
        position, word, _end = list(old.entries())[1]
        assert old.entry(position, word & ring.LENGTH) is not None  # a BODY could name it
    finally:
        old.close()


_CAPACITY = 256


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=_CAPACITY, max_size=_CAPACITY), st.sampled_from([1, 2, 3]),
       st.one_of(st.integers(0, 4 * _CAPACITY // 8).map(lambda n: n * 8),
                 st.integers(0, 4 * _CAPACITY)),
       st.integers(-16, 2 * _CAPACITY))
def test_any_bytes_in_a_ring_file_read_as_entries_or_raise_value_error(
        data: bytes, version: int, consumed: int, ahead: int) -> None:
    written = max(0, consumed + ahead)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "any.ring"
        path.write_bytes(_header(version, _CAPACITY, written, consumed) + data)
        try:
            any_ring = ring.Ring.open(path)
        except ValueError:
            assert version == 3 or consumed % 8 or not 0 <= written - consumed <= _CAPACITY
            return
        try:
            assert all(end > position for position, _word, end in any_ring.entries())
            problem = None
            try:
                pending = list(ring.pending(any_ring))
            except ValueError as exc:  # a length past the end of the file
                problem, pending = str(exc), []
            assert problem is None or "ends inside the body" in problem
            assert all(len(body) == any_ring.state(position) & ring.LENGTH
                       for position, _end, _request_id, body in pending)
        finally:
            any_ring.close()


def _release_at_shutdown(path: Path, lets_go_at: int | None) -> tuple[int, float, Rings]:
    """SHUTDOWN's release of a consumed ring whose writer holds its flock and lets go at the
    ``lets_go_at``-th look (None: it lives on), on a fake clock: (looks, seconds waited, the
    rings left attached; closed by the caller)."""
    fd = ring.create(path)
    fcntl.flock(fd, fcntl.LOCK_EX)
    writer = ring.Ring(fd, path)
    position, end = writer.append(b"body", b"request")
    writer.mark(position, ring.ACCEPTED)
    writer.settle(end)
    rings = Rings()
    rings.attach(ring.Ring.open(path), path.name[-21:-5])
    now, looks = [0.0], [0]

    def sleep(seconds: float) -> None:
        looks[0] += 1
        now[0] += seconds
        if looks[0] == lets_go_at:
            writer.close()
            os.close(fd)

    rings.release(0.05, monotonic=lambda: now[0], sleep=sleep)
    if lets_go_at is None or looks[0] < lets_go_at:
        writer.close()
        os.close(fd)
    return looks[0], now[0], rings


def test_shutdown_deletes_a_consumed_ring_once_its_killed_writer_lets_go(tmp_path: Path) -> None:
    path = tmp_path / ring.ring_name(4195, "ab" * 8)
    looks, _waited, rings = _release_at_shutdown(path, lets_go_at=3)
    assert looks == 3
    assert not path.exists()
    assert rings.files == {}


def test_shutdown_leaves_a_live_writers_ring_after_a_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / ring.ring_name(4195, "cd" * 8)
    looks, waited, rings = _release_at_shutdown(path, lets_go_at=None)
    rings.close()
    assert 0.05 <= waited < 0.052
    assert looks == 50
    assert path.exists()


@settings(max_examples=200, deadline=None)
@given(tag=st.text("0123456789abcdef", min_size=16, max_size=16),
       position=st.integers(0, 2**64 - 1).map(lambda n: n & ~7), count=st.integers(0, 600))
def test_a_ring_records_id_is_its_rings_tag_its_entrys_position_in_hex_and_its_index(
        tag: str, position: int, count: int) -> None:
    ids = ring.record_ids(tag, position, count)
    assert len(ids) == count
    for index, record_id in enumerate(ids):
        assert record_id.split("-") == [tag, format(position, "x"), str(index)]
