"""Crash durability against a real broker: records accepted (202) while the broker was
unreachable survive the extension dying without a drain, and the next extension on the same
journal directory restores and delivers every one of them under its id, and nothing of a
batch the process died writing; a journal that cannot write refuses batches (507) instead of
accepting them unjournaled, and resumes by itself. Records handed over HTTP (the ring
transport off): a ring is its records' own journal (test_handoff_ring.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kafka_relay.client import RelayClient
from kafka_relay.config import FlushStrategy
from kafka_relay.delivery.journal import FILE_GLOB, _read_segment, frame_payloads
from kafka_relay.protocol import RelayStorageUnavailable
from tests.conftest import ProxiedBroker
from tests.relay_harness import TOKEN, running_relay


def test_records_accepted_before_the_extension_died_are_delivered_by_the_next_one(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    proxy.cut()  # nothing reaches Kafka: every accepted record stays pending
    with running_relay(proxy.address, tmp_path, default_topic=topic, ring=False, init_probe_ms=200,
                       journal=True) as dead:
        sent: list[str] = []
        for batch in range(5):
            sent += dead.client.send([{"key": f"k{batch}-{i}", "value": i}
                                      for i in range(100)]).ids
        assert dead.parts.engine.gauge().pending == 500
        assert dead.parts.engine.gauge().counts["delivered"] == 0
        # Leaving the block stops the engine without a drain: what a SIGKILL leaves behind.
    assert list((tmp_path / "journal").glob("kafka-relay-journal-*.bin"))

    proxy.restore()
    with running_relay(proxy.address, tmp_path, default_topic=topic, ring=False,
                       journal=True) as fresh:
        relay = fresh.parts.engine
        assert relay.gauge().counts["restored"] == 500
        deadline = time.monotonic() + 60
        while relay.gauge().pending and time.monotonic() < deadline:
            relay.flush(1.0, retry_now=True)
        counts = relay.gauge().counts
        assert (counts["delivered"], counts["accepted"], counts["spilled"]) == (500, 0, 0)
        report = relay.drain(int(time.time() * 1000) + 2_000, reason="spindown")
        assert (report.pending, report.unaccounted) == (0, 0)
    assert not (tmp_path / "journal").exists(), "a clean exit leaves no journal behind"
    got = broker.read(topic, timeout=30)  # to its end: a duplicate carries the same id
    assert {r.headers["x-relay-id"].decode() for r in got} == set(sent)


# The extension in a process of its own: two batches answered 202 (their ids printed), then
# a third of ~200 KB (four 64 KB frames) with the file size limited to 100 KB past where it
# begins: the kernel's writev stops there, after the batch's first frame, and the process
# dies before it writes the rest, none of the journal's failure handling run. "sigxfsz": the
# next write gets SIGXFSZ, whose default action ends the process on the spot. "sigkill": it
# stops itself where it would write the rest, and the test SIGKILLs it.
_DIES_WRITING = """
import json, os, resource, signal, sys
from pathlib import Path
from tests.relay_harness import running_relay
bootstrap, tmp, topic, death = sys.argv[1:]
with running_relay(bootstrap, Path(tmp), default_topic=topic, init_probe_ms=200,
                   journal=True, ring=False) as relay:
    ids = [relay.client.send([{"key": f"k{b}-{i}", "value": "v" * 300} for i in range(50)]).ids
           for b in range(2)]
    print(json.dumps(ids), flush=True)
    (segment,) = Path(tmp, "journal").glob("kafka-relay-journal-*.bin")
    limit = segment.stat().st_size + 100_000
    print(limit, flush=True)
    if death == "sigxfsz":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    else:
        def stop(fd, data):
            os.kill(os.getpid(), signal.SIGSTOP)
            raise AssertionError("not killed while stopped")
        os.write = stop  # the journal writes the rest of a short writev with os.write
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    relay.client.send([{"key": f"cut-{i}", "value": "x" * 1000} for i in range(200)])
"""


@pytest.mark.parametrize("death", [signal.SIGXFSZ, signal.SIGKILL], ids=["sigxfsz", "sigkill"])
def test_a_batch_the_extension_died_writing_is_not_restored_and_the_ones_before_are(
    proxied_broker: ProxiedBroker, tmp_path: Path, death: signal.Signals
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    proxy.cut()  # nothing is delivered: every batch stays in the journal
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", _DIES_WRITING, proxy.address, str(tmp_path),
                              topic, death.name.lower()], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": f"{root}:{root / 'extension'}"})
    if death is signal.SIGKILL:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"the child ended ({status}) instead of stopping"
        child.kill()
    out, err = child.communicate(timeout=120)
    assert child.returncode == -death, err
    answered, limit = out.splitlines()
    accepted = [i for ids in json.loads(answered) for i in ids]
    (segment,) = (tmp_path / "journal").glob(FILE_GLOB)
    data = segment.read_bytes()
    assert len(data) == int(limit), "the kill landed inside the third batch's writev"
    left = _read_segment(segment)
    assert [r.id for r in left.records] == accepted
    cut = data[len(data) - left.torn:]
    assert len(list(frame_payloads(cut))) == 1, "the cut batch's first frame is whole"

    proxy.restore()
    with running_relay(proxy.address, tmp_path, default_topic=topic, ring=False,
                       journal=True) as fresh:
        relay = fresh.parts.engine
        assert relay.gauge().counts["restored"] == len(accepted) == 100
        (torn,) = fresh.log_events("journal.torn_tail")
        assert (torn["bytes"], torn["restored"]) == (left.torn, len(accepted))
        relay.flush(30.0)
        assert relay.gauge().counts["delivered"] == len(accepted)
    got = broker.read(topic, timeout=30)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(accepted)


@contextmanager
def _tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only): a disk that really fills."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def test_a_full_journal_disk_refuses_batches_with_507_and_journaling_resumes_by_itself(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker.broker, proxied_broker.proxy
    topic = broker.create_topic()
    proxy.cut()  # nothing is delivered, so nothing leaves the journal: its disk fills
    with _tiny_filesystem(tmp_path / "small", "64k") as small, \
            running_relay(proxy.address, tmp_path, default_topic=topic, ring=False,
                          init_probe_ms=200,
                          flush=FlushStrategy.parse("shutdown"),
                          env_extra={"KAFKA_RELAY_JOURNAL_DIR": str(small / "journal")}) as h:
        client = RelayClient(env={}, port=h.config.port, token=TOKEN, sleep=lambda _s: None,
                             timeout_s=0.5)
        accepted: list[str] = []
        refusals: list[str] = []
        for batch in range(40):  # ~4 KB each: the 64 KB disk fills on the way
            try:
                accepted += client.send([{"key": f"k{batch}-{i}", "value": "x" * 400}
                                         for i in range(10)]).ids
            except RelayStorageUnavailable as exc:
                refusals.append(str(exc))
        client.close()
        assert accepted
        assert refusals
        assert all("journal cannot write" in r and "No space left" in r for r in refusals)
        status = h.client.status()["journal"]
        assert status["enabled"] is False
        assert "No space left" in status["error"]
        assert status["records"] == len(accepted) == h.parts.engine.gauge().pending
        assert len(h.log_events("journal.write_failed")) == 1, "logged once"

        proxy.restore()
        deadline = time.monotonic() + 60
        while h.parts.engine.gauge().pending and time.monotonic() < deadline:
            h.parts.engine.flush(1.0, retry_now=True)  # delivered: their segments empty out
        more = h.client.send([{"key": "after", "value": i} for i in range(10)]).ids
        assert h.client.status()["journal"]["error"] is None
        assert len(h.log_events("journal.resumed")) == 1
        h.parts.engine.flush(30.0)
    got = broker.read_ids(topic, accepted + more, timeout=30)  # retried: duplicates
    assert {r.headers["x-relay-id"].decode() for r in got} == set(accepted + more)
