"""Seeded, replayable fault schedules against the real broker, the fault proxy and the sandbox.

A schedule is a list of steps drawn from one seed (the same seed gives the same steps, so a
failing seed is replayed exactly): invocations handing over batches of hostile-but-valid
records (any Unicode, empty and null keys, raw bytes with NULs, tombstones, headers, explicit
timestamps, values up to 64 KB), broker cuts, pauses and added latency (the fault proxy),
freezes between invocations, SIGKILLs of the extension at a random moment of an invocation,
a full journal disk (a small tmpfs, root only) and SHUTDOWN at a random point (the next steps
run in a new environment, as Lambda starts one). The last steps heal every fault, hand one
more batch over and spin the environment down.

``check`` is the invariant checker: every record answered 202 is on the topic or in the
``KAFKA_RELAY_SPILL`` lines, byte for byte as given; copies of one record only ever share its
``x-relay-id`` (no record under two ids) and are identical.

    python -m devtools.fault_schedule --show SEED       # print one schedule's steps
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.faultproxy import FaultProxy
from devtools.kafka_broker import ConsumedRecord, free_port, read_topic
from devtools.procfs import STATE, stat_fields
from devtools.sandbox import Sandbox
from devtools.sandbox.errors import SandboxError
from kafka_relay.protocol import ID_HEADER, encode_value
from kafka_relay.spill.codec import parse_spill_lines

MARK = "fault-mark"  # the header naming each record (seed/step/index), to find copies
HANDED = "handler.handed_over"  # what the function prints once the extension owns a batch
STEP_KINDS = ("send", "send", "send", "cut", "pause", "latency", "heal", "freeze", "kill",
              "disk_full", "disk_free", "shutdown")


@dataclass(frozen=True)
class Step:
    kind: str
    arg: float = 0.0  # records (send), seconds (freeze, kill delay), ms (latency)


def schedule(seed: int, *, steps: int = 8) -> list[Step]:
    """The steps of ``seed``: random faults, then heal everything and hand one more batch."""
    rng = random.Random(seed)
    out: list[Step] = []
    for _ in range(steps):
        kind = rng.choice(STEP_KINDS)
        if kind == "send":
            out.append(Step(kind, rng.randint(1, 400)))
        elif kind == "latency":
            out.append(Step(kind, rng.choice([5, 50, 300])))
        elif kind == "freeze":
            out.append(Step(kind, rng.uniform(0.1, 1.5)))
        elif kind == "kill":
            out.append(Step(kind, rng.uniform(0.0, 0.6)))
        else:
            out.append(Step(kind))
    return [*out, Step("heal"), Step("disk_free"), Step("send", 20)]


def hostile_records(rng: random.Random, count: int, mark: str) -> list[dict[str, Any]]:
    """Valid records that are hard to carry unchanged; each names itself in a header."""
    texts = ["", "é", "😀", "a\u0000b", "\u202e", "x" * 300, "\ud7ff", "ﬀ", "line\nbreak"]
    names = [t for t in texts if t and "\u0000" not in t]  # a NUL in a header name is refused
    records = []
    for index in range(count):
        record: dict[str, Any] = {"headers": {MARK: f"{mark}-{index}"}}
        key_choice = rng.random()
        record["key"] = (None if key_choice < 0.1 else "" if key_choice < 0.2
                         else f"k{rng.randint(0, 9)}{rng.choice(texts)}")
        value_choice = rng.random()
        if value_choice < 0.1:
            record["value"] = None  # a tombstone
        elif value_choice < 0.3:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) + b"\x00"
            record["value_b64"] = base64.b64encode(raw).decode()
        elif value_choice < 0.35:
            record["value"] = "v" * rng.randint(1, 64 * 1024)
        else:
            record["value"] = {"i": index, "t": rng.choice(texts), "n": [1.5, -0, None, True],
                               "deep": [[[{"x": rng.random()}]]]}
        if rng.random() < 0.3:
            record["headers"][rng.choice(names)] = rng.choice(texts)
        if rng.random() < 0.2:
            record["timestamp_ms"] = rng.randint(1, 2**41)
        records.append(record)
    return records


@dataclass
class Run:
    """What one schedule did: the records each 202 answered for, and everything logged."""

    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record as given
    log_lines: list[str] = field(default_factory=list)
    kills: int = 0
    environments: int = 1
    refused_batches: int = 0  # not answered 202 (a kill, a full disk): nothing to check
    rejected: list[Any] = field(default_factory=list)  # 400s: a valid record refused
    last_reset: bool = False  # the last invocation ended its environment (a crash)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[Path | None]:
    """A tmpfs of ``size`` at ``path`` for the journal (None when it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def _fill(disk: Path) -> None:
    with contextlib.suppress(OSError), (disk / "filler").open("wb") as out:
        for _ in range(4096):  # bounded: the tmpfs is a few MB
            out.write(b"\0" * 65536)
            out.flush()


@dataclass
class Runner:
    """Runs schedules; ``sandbox`` opens an environment with extra variables."""

    sandbox: Callable[[Mapping[str, str]], Sandbox]
    proxy: FaultProxy
    disk: Path | None  # the journal's tmpfs, or None (disk steps are skipped)

    def run(self, seed: int, steps: Sequence[Step]) -> Run:
        rng = random.Random(seed * 7919 + 1)
        run = Run()
        env_number = 0
        box = self._open(env_number)
        try:
            for number, step in enumerate(steps):
                if step.kind == "shutdown":
                    self._reinit_if_reset(box, run, rng, f"{seed}-{number}-reinit")
                    box.shutdown("spindown")
                    run.log_lines += box.log_lines()
                    box.close()
                    env_number += 1
                    run.environments += 1
                    box = self._open(env_number)
                elif step.kind in ("send", "kill"):
                    count = int(step.arg) if step.kind == "send" else rng.randint(50, 400)
                    records = hostile_records(rng, count, f"{seed}-{number}")
                    delay = step.arg if step.kind == "kill" else None
                    self._send(box, records, run, kill_after=delay)
                else:
                    self._fault(step)
            self._reinit_if_reset(box, run, rng, f"{seed}-reinit")
            box.shutdown("spindown")
        finally:
            run.log_lines += box.log_lines()
            box.close()
        return run

    def _reinit_if_reset(self, box: Sandbox, run: Run, rng: random.Random, mark: str) -> None:
        """Lambda inits a reset environment again at its next event, which restores what
        the journal kept; one reset and then destroyed loses its /tmp, the journal's one
        limit (docs/records.md), so a spin-down here follows that next event."""
        for attempt in range(3):  # bounded: an init that fails every time fails the verdict
            if not run.last_reset:
                return
            self._send(box, hostile_records(rng, 20, f"{mark}-{attempt}"), run, kill_after=None)

    def _open(self, number: int) -> Sandbox:
        env: dict[str, str] = {"KAFKA_RELAY_PORT": str(free_port()),
                               "KAFKA_RELAY_FLUSH_BUDGET_MS": "300"}
        if self.disk is not None:
            env["KAFKA_RELAY_JOURNAL_DIR"] = str(self.disk / f"env-{number}")
        box = self.sandbox(env)
        box.open()
        return box

    def _fault(self, step: Step) -> None:
        if step.kind == "cut":
            self.proxy.cut()
        elif step.kind == "pause":
            self.proxy.pause()
        elif step.kind == "latency":
            self.proxy.set_latency(up_ms=step.arg, down_ms=step.arg)
        elif step.kind == "heal":
            self.proxy.restore()
            self.proxy.resume()
            self.proxy.set_latency(up_ms=0, down_ms=0)
        elif step.kind == "freeze":
            time.sleep(step.arg)  # the environment is frozen between invocations
        elif step.kind == "disk_full" and self.disk is not None:
            _fill(self.disk)
        elif step.kind == "disk_free" and self.disk is not None:
            (self.disk / "filler").unlink(missing_ok=True)

    def _send(self, box: Sandbox, records: list[dict[str, Any]], run: Run, *,
              kill_after: float | None) -> None:
        start = len(box.log_lines())
        killer = None
        if kill_after is not None:
            killed: list[int] = []
            killer = threading.Thread(target=_kill_extension,
                                      args=(box, start, kill_after, killed), daemon=True)
            killer.start()
        try:
            result = box.invoke({"records": records})
        except SandboxError:  # the kill landed in the init this invoke ran
            result = None
        run.last_reset = result is None or result.reset is not None
        if killer is not None:
            killer.join(timeout=30)
            run.kills += len(killed)
        payload = result.payload if result is not None else None
        if isinstance(payload, dict) and payload.get("rejected"):
            run.rejected.append(payload["rejected"])
        if isinstance(payload, dict) and payload.get("ids"):
            ids = [str(i) for i in payload["ids"]]
        else:  # killed, or refused: the printed marker is what was answered 202
            handed = [json.loads(line) for line in box.log_lines()[start:]
                      if HANDED in line and line.lstrip().startswith("{")]
            ids = [str(i) for event in handed if event.get("event") == HANDED
                   for i in event.get("ids", [])]
            run.refused_batches += not ids
        if ids:
            run.sent.update(zip(ids, records, strict=True))


def _kill_extension(box: Sandbox, start: int, delay_s: float, killed: list[int]) -> None:
    """SIGKILL the extension ``delay_s`` into the invocation that starts after log line
    ``start`` (not during an init: see docs/durability.md on a kill in an init), if that
    invocation still runs: a frozen environment's processes do not die on Lambda."""
    with contextlib.suppress(Exception):  # the invocation ended first: nothing to kill
        box.wait_for_log(r"^START RequestId", timeout=30, start=start)
    time.sleep(delay_s)
    for pid in box.pids():
        with contextlib.suppress(OSError):
            if b"kafka_relay" in Path(f"/proc/{pid}/cmdline").read_bytes():
                if not _frozen(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return


def _frozen(pid: int) -> bool:
    """Whether ``pid`` is stopped (the sandbox freezes with SIGSTOP between invocations)."""
    return stat_fields(Path(f"/proc/{pid}/stat").read_text())[STATE] in ("T", "t")


def expected(record: Mapping[str, Any]) -> tuple[bytes | None, bytes | None, dict[str, bytes]]:
    """The key, value and headers a record given to the client must arrive with."""
    key = record.get("key")
    if "value_b64" in record:
        value: bytes | None = base64.b64decode(record["value_b64"])
    else:
        value = None if record.get("value") is None else encode_value(record["value"])
    headers = {name: text.encode() for name, text in record.get("headers", {}).items()}
    return (None if key is None else key.encode()), value, headers


@dataclass(frozen=True)
class Verdict:
    sent: int
    delivered: int
    spilled: int
    lost: list[str]
    altered: list[str]
    duplicated_under_new_ids: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.altered or self.duplicated_under_new_ids)


def check(run: Run, on_topic: Sequence[ConsumedRecord]) -> Verdict:
    """Every 202 delivered or spilled, unchanged; copies only under the record's own id."""
    spilled = {r.id: r for r in parse_spill_lines(run.log_lines).records}
    copies: dict[str, list[tuple[bytes | None, bytes | None, dict[str, bytes]]]] = {}
    ids_of_mark: dict[bytes, set[str]] = {}
    for consumed in on_topic:
        relay_id = consumed.headers.get(ID_HEADER, b"").decode()
        headers = {k: v for k, v in consumed.headers.items() if k != ID_HEADER}
        copies.setdefault(relay_id, []).append((consumed.key, consumed.value, headers))
        ids_of_mark.setdefault(headers.get(MARK, b""), set()).add(relay_id)
    for record in spilled.values():
        mark = dict(record.headers).get(MARK, b"")
        ids_of_mark.setdefault(mark, set()).add(record.id)
    lost, altered = [], []
    for relay_id, given in run.sent.items():
        want = expected(given)
        if relay_id in copies:
            if any(copy != want for copy in copies[relay_id]):
                altered.append(relay_id)
        elif relay_id in spilled:
            got = spilled[relay_id]
            if (got.key, got.value, dict(got.headers)) != want:
                altered.append(relay_id)
        else:
            lost.append(relay_id)
    doubled = sorted(mark.decode(errors="replace") for mark, ids in ids_of_mark.items()
                     if mark and len(ids) > 1)
    return Verdict(len(run.sent), sum(1 for i in run.sent if i in copies),
                   sum(1 for i in run.sent if i in spilled and i not in copies), lost, altered,
                   doubled)


def read_all(bootstrap: str, topic: str) -> list[ConsumedRecord]:
    """Everything on the topic, duplicates included (until it is idle at its end)."""
    return read_topic(bootstrap, topic, timeout=60, idle=2.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.fault_schedule")
    parser.add_argument("--show", type=int, required=True, help="print the steps of this seed")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    for step in schedule(args.show, steps=args.steps):
        print(json.dumps({"kind": step.kind, "arg": step.arg}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
