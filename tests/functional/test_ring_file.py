"""The ring file (``kafka_relay.ring``) as a crash journal: an extension that starts over the
file finds exactly the bodies accepted and not yet settled, through wrap-around, refusals,
bodies never answered and a writer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay import ring

# (body, its answer: accepted, refused or none yet; how many of the oldest entries settle
# after it)
_STEPS = st.lists(st.tuples(st.binary(max_size=120),
                            st.sampled_from([ring.ACCEPTED, ring.REFUSED, 0]),
                            st.integers(0, 3)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_STEPS)
def test_a_restart_finds_the_accepted_bodies_not_yet_settled_in_order(
        steps: list[tuple[bytes, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relay.ring"
        fd = ring.create(path, 256)  # small: most runs wrap around several times
        writer = ring.Ring(fd, path)
        os.close(fd)
        entries: list[tuple[int, bytes, int]] = []  # (end, body, answer)
        settled = 0
        for body, answer, settling in steps:
            while True:
                try:
                    position, end = writer.append(body)
                    break
                except ring.RingFull:
                    assert settled < len(entries), "full with nothing left to settle"
                    settled += 1
                    writer.settle(entries[settled - 1][0])
            if answer:
                writer.mark(position, answer)
            entries.append((end, body, answer))
            step = min(settling, len(entries) - settled)
            if step:
                settled += step
                writer.settle(entries[settled - 1][0])
        writer.close()

        restarted = ring.Ring.open(path)
        found = [bytes(body) for _position, _end, body in restarted.pending()]
        ends = [end for _position, end, _body in restarted.pending()]
        restarted.close()
    expected = [(end, body) for end, body, answer in entries[settled:]
                if answer == ring.ACCEPTED]
    assert found == [body for _end, body in expected]
    assert ends == [end for end, _body in expected]


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
