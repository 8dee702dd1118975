"""The handoff alternatives, side by side: CPU per record and handoff rate of each way a
handler could hand records to Kafka, against the real local broker.

    .venv/bin/python -m bench.alternatives [--quick] [--reps N] [--paths ...]
                                           [--scenarios ...] [--bootstrap B]

Paths (every one produces with librdkafka and ``producer.factory.DEFAULTS``, all but ring-rd
through confluent-kafka's Producer):

  inproc       the baseline: one process, ``json.dumps`` + ``produce()`` per record, a
               delivery callback, ``flush()`` per invocation (a reused in-handler producer)
  http         kafka-relay today: ``RelayClient.send`` per invocation to the real handoff
               server and delivery engine (journal on) in a second process
  ring-engine  the ring file (kafka_relay.ring) as the transport into today's engine: the relay
               decodes and validates with the handoff's own ``records_from_body`` and hands
               the Records to the engine; the ring is the journal (``KAFKA_RELAY_JOURNAL``
               off); the consumed offset moves at a flush here
  ring         the ring file and a lean Python relay: ``ring.decode_frames`` over the
               mapped body (memoryview slices), the schema's field rules, ``produce()`` per
               record with an x-relay-id header, one delivery counter per body, the consumed
               offset moved as bodies settle
  ring-c       the same with the C accelerator (bench/relay_accel.c): the client frames in C,
               the relay validates and produces in C, settles with a C callback
  ring-rd      ring-c's client and check, the relay producing straight into librdkafka from C
               (bench/relay_rdkafka.c, its own producer on the wheel's librdkafka): no Python
               object per record

Scenarios: 100 and 10 records of ~1 KB JSON per invocation (CPU per record, no quota), and
500 x 300 B under a 1-vCPU quota (handoff rate). The client (the handler's process) and the
relay run as separate processes, started fresh per measurement, in a cgroup of their own
(the sandbox's, ``devtools.sandbox.cgroup``): the quota applies to both together, as
Lambda's applies to the whole environment. Without cgroups the quota becomes pinning both to
one core (said in the output). CPU is each process's user + sys over the measured
invocations (``time.process_time``: every thread, librdkafka's included), after one warm-up
invocation; the relay's includes delivering everything (the client's final flush). Handoff
rate = records / wall time of the client's invocations (for inproc: produce + flush).
Every path is checked to have put exactly its records on its topic (count and key + value
bytes, read back from the broker); the run exits 1 when one did not.

Paths run in rotating order in each repetition; a ratio is a path's CPU ÷ inproc's in the
same repetition; the table shows medians and ranges. Also measured in-process (the calling
thread's CPU, best of interleaved rounds): what the accelerator's encode, check and produce
loop cost per record against the Python they replace, and ``produce()`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from random import Random
from typing import Any, NamedTuple

from bench import accel, ring
from devtools.kafka_broker import KafkaBroker, create_topics, free_port
from devtools.sandbox.cgroup import EnvironmentCgroup

PATHS = ("inproc", "http", "ring-engine", "ring", "ring-c", "ring-rd")
RELAYED = frozenset(PATHS) - {"inproc"}
_TOKEN = "alternatives-token"
_RING_BYTES = 64 * 1024 * 1024
_ANSWER_S = 120.0  # the longest a child may take to answer one command
_FILLER = Random(24).randbytes(2048).hex()  # text-like, compressible as real data is
_CGROUP_LABEL = "kafka-relay-alternatives"
_ROOT = Path(__file__).resolve().parents[1]


class Scenario(NamedTuple):
    name: str
    per_invocation: int  # records
    size: int  # bytes per record (key + JSON value), about
    invocations: int  # measured, after one warm-up invocation
    vcpus: float | None  # the CPU quota of client + relay together (None: none)


SCENARIO_KEYS = ("100x1KB", "10x1KB", "handoff")  # each scenario's name starts with its key


def scenarios(quick: bool, scale: float = 1.0) -> list[Scenario]:
    base = [Scenario("100x1KB", 100, 1024, 300, None), Scenario("10x1KB", 10, 1024, 1000, None),
            Scenario("handoff 500x300B 1vCPU", 500, 300, 100, 1.0)]
    factor = scale * (0.2 if quick else 1.0)
    return [s._replace(invocations=max(2, round(s.invocations * factor))) for s in base]


def workload(invocation: int, count: int, size: int) -> list[dict[str, Any]]:
    """The bench's records (the shape of bench_handlers.records), deterministic so a test can
    rebuild what each path was given: key ``<invocation>-<i>``, a JSON object value."""
    pad = _FILLER[: max(0, size - 60)]
    return [{"key": f"{invocation}-{i}",
             "value": {"run": "alternatives", "n": invocation, "i": i, "ts": 1_700_000_000_000,
                       "pad": pad}} for i in range(count)]


def value_bytes(value: Any) -> bytes:
    """A value as every path puts it on the topic (ASCII here: both JSON encoders agree)."""
    return json.dumps(value, separators=(",", ":")).encode()


# -- the relay processes -----------------------------------------------------------------


class Refused(Exception):
    """A body the relay does not take; the message goes back to the writer."""


class _PySettle:
    """One body's delivery counter (the C accelerator's ``Settle`` in Python)."""

    __slots__ = ("failed", "outstanding")

    def __init__(self, count: int) -> None:
        self.outstanding = count
        self.failed: list[tuple[Any, Any]] = []

    def __call__(self, error: Any, message: Any) -> None:
        self.outstanding -= 1
        if error is not None:
            self.failed.append((error, message))


class _Taker:
    """What a ring relay does with a body: ``accept`` validates it whole (Refused: nothing
    taken) and returns the step that produces it, run after the answer went out."""

    def __init__(self, ring_file: ring.Ring, producer: Any) -> None:
        self.ring = ring_file
        self.producer = producer
        self.bodies: deque[tuple[int, Any]] = deque()  # (end, its counter), in ring order
        self.failed = 0

    def accept(self, position: int, length: int, end: int) -> Callable[[], None]:
        raise NotImplementedError

    def refused(self, position: int, end: int) -> None:
        self.ring.mark(position, ring.REFUSED)
        self.bodies.append((end, _PySettle(0)))

    def settle(self) -> None:
        """Move the consumed offset past every body whose records all settled."""
        bodies, end = self.bodies, -1
        while bodies and bodies[0][1].outstanding <= 0:
            end, counter = bodies.popleft()
            failed = counter.failed  # the reports (Python, relay_accel) or their count
            self.failed += failed if isinstance(failed, int) else len(failed)
        if end >= 0:
            self.ring.settle(end)

    def poll(self) -> None:
        self.producer.poll(0)
        self.settle()

    def flush(self) -> int:
        left = int(self.producer.flush(30))
        self.settle()
        return left + sum(int(c.outstanding) for _, c in self.bodies)


class _PythonTaker(_Taker):
    def __init__(self, ring_file: ring.Ring, producer: Any, topic: str) -> None:
        from kafka_relay.handoff import schema  # noqa: PLC0415 - the relay process only
        from kafka_relay.protocol import ID_HEADER  # noqa: PLC0415
        from kafka_relay.record import IdSource  # noqa: PLC0415

        super().__init__(ring_file, producer)
        self.topic = topic
        self.readonly = memoryview(ring_file.map).toreadonly()
        self.decode = ring.decode_frames
        self.schema = schema
        self.id_header = ID_HEADER
        self.new_ids = IdSource().take

    def accept(self, position: int, length: int, end: int) -> Callable[[], None]:
        schema = self.schema
        start = ring.HEADER + position % self.ring.capacity + ring.ENTRY_HEAD
        try:
            # decode_frames reads any buffer; over a view its fields are views too.
            frames = self.decode(self.readonly[start:start + length])
        except ValueError as exc:  # a FrameError, naming the record
            raise Refused(str(exc)) from None
        if not frames:
            raise Refused("no records in the request")
        for index, (topic, _key, _value, headers, timestamp) in enumerate(frames):
            # The schema's field rules, only for the fields a frame carries.
            try:
                if topic is not None:
                    schema._frame_topic(bytes(topic))
                if timestamp is not None and not 0 < timestamp < 2**63:
                    raise ValueError(schema._BAD_TIMESTAMP)
                if headers:
                    schema._named_headers(tuple((bytes(n), bytes(v)) for n, v in headers))
            except ValueError as exc:
                raise Refused(f"record {index}: {exc}") from None
        counter = _PySettle(len(frames))
        self.bodies.append((end, counter))

        def produce() -> None:
            send, id_header, default = self.producer.produce, self.id_header, self.topic
            for (topic, key, value, headers, timestamp), record_id in zip(
                    frames, self.new_ids(len(frames)), strict=True):
                record_headers = [(id_header, record_id.encode())]
                if headers:
                    record_headers[:0] = [(bytes(n).decode(), bytes(v)) for n, v in headers]
                while True:
                    try:
                        send(default if topic is None else bytes(topic).decode(),
                             value=None if value is None else bytes(value),
                             key=None if key is None else bytes(key), headers=record_headers,
                             on_delivery=counter, timestamp=timestamp or 0)
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        self.producer.poll(0.05)

        return produce


class _AccelTaker(_Taker):
    def __init__(self, ring_file: ring.Ring, producer: Any, topic: str,
                 module: accel.Accel) -> None:
        from kafka_relay.record import IdSource  # noqa: PLC0415 - the relay process only

        super().__init__(ring_file, producer)
        self.topic = topic
        self.accel = module
        self.prefix = IdSource().prefix
        self.next_id = 1

    def accept(self, position: int, length: int, end: int) -> Callable[[], None]:
        start = ring.HEADER + position % self.ring.capacity + ring.ENTRY_HEAD
        body = memoryview(self.ring.map)[start:start + length]  # in place, for C
        try:
            count = self.accel.check(body, True)
        except ValueError as exc:
            index, reason = exc.args
            raise Refused(reason if index < 0 else f"record {index}: {reason}") from None
        first, self.next_id = self.next_id, self.next_id + count
        return self.producing(body, count, first, end)

    def producing(self, body: memoryview, count: int, first: int,
                  end: int) -> Callable[[], None]:
        """The step that produces a checked body, its counter registered."""
        counter = self.counter(count)
        self.bodies.append((end, counter))

        def produce() -> None:
            done = 0
            while done < count:
                done = self.produce_from(body, done, first, counter)
                if done < count:
                    self.drain()  # librdkafka's queue is full: let it drain

        return produce

    def counter(self, count: int) -> Any:
        return self.accel.Settle(count)

    def produce_from(self, body: memoryview, start: int, first: int, counter: Any) -> int:
        return self.accel.produce_all(body, start, self.producer.produce, self.topic,
                                      self.prefix, first, counter)

    def drain(self) -> None:
        self.producer.poll(0.05)


class _RdTaker(_AccelTaker):
    """The accelerator's check, then straight into librdkafka from C."""

    def __init__(self, ring_file: ring.Ring, topic: str, module: accel.Accel,
                 rdkafka: accel.Rdkafka, settings: dict[str, str]) -> None:
        self.rdkafka = rdkafka
        self.rd = rdkafka.Producer(settings)
        super().__init__(ring_file, None, topic, module)

    def counter(self, count: int) -> Any:
        return self.rdkafka.Counter(count)

    def produce_from(self, body: memoryview, start: int, first: int, counter: Any) -> int:
        return self.rd.produce_body(body, start, self.topic, self.prefix, first, counter)

    def drain(self) -> None:
        self.rd.poll(50)

    def poll(self) -> None:
        self.rd.poll(0)
        self.settle()

    def flush(self) -> int:
        left = self.rd.flush(30_000)
        self.settle()
        return left + sum(int(c.outstanding) for _, c in self.bodies)


class _EngineTaker(_Taker):
    """Today's engine behind the ring: the journal is the ring, so the engine's is off."""

    def __init__(self, ring_file: ring.Ring, parts: Any) -> None:
        from kafka_relay.delivery.ledger import BufferFull  # noqa: PLC0415 - relay only
        from kafka_relay.handoff.schema import InvalidRequest, records_from_body  # noqa: PLC0415
        from kafka_relay.protocol import FRAMES_TYPE  # noqa: PLC0415

        super().__init__(ring_file, None)
        self.parts = parts
        self.refusals = (InvalidRequest, BufferFull)
        self.records_from_body = records_from_body
        self.frames_type = FRAMES_TYPE
        self.ids = parts.mode.ids

    def accept(self, position: int, length: int, end: int) -> Callable[[], None]:
        config = self.parts.config
        try:
            # Records hold bytes (produce() takes no memoryview): one copy of the body.
            records = self.records_from_body(
                bytes(self.ring.body(position, length)), self.frames_type,
                default_topic=config.default_topic, new_ids=self.ids.take, request_id=None,
                now_ms=int(time.time() * 1000))
            self.parts.engine.accept(records)
        except self.refusals as exc:
            raise Refused(str(exc)) from None
        self.last_end = end
        return _nothing

    def poll(self) -> None:
        """The engine's pump delivers and settles on its own thread."""

    def flush(self) -> int:
        left = int(self.parts.engine.flush(30.0).remaining)
        if not left:
            self.ring.settle(getattr(self, "last_end", 0))
        return left


def _nothing() -> None:
    return None


def _serve_ring(taker: _Taker, socket_path: str, commands: _Commands) -> None:
    """The relay's loop: bodies from the ring's socket, commands from stdin, until "stop"."""
    listener = ring.relay_socket(socket_path)
    commands.reply({"ready": socket_path})
    conn, _ = listener.accept()
    listener.close()
    stdin = sys.stdin.fileno()
    message = ring.MESSAGE
    while True:
        ready, _, _ = select.select([conn, stdin], [], [], 0.005 if taker.bodies else None)
        if conn in ready:
            data = conn.recv(64)
            if data[:1] == b"B":
                _, position, length = message.unpack(data)
                end = position + ring.entry_size(length)
                try:
                    produce = taker.accept(position, length, end)
                except Refused as exc:
                    taker.refused(position, end)
                    conn.send(ring.ANSWER_REFUSED + str(exc).encode())
                    continue
                conn.send(ring.ANSWER_ACCEPTED)
                produce()
            elif data == ring.FLUSH:
                conn.send(ring.FLUSH + str(taker.flush()).encode())
            elif not data:  # the writer is gone
                break
        if stdin in ready and not commands.handle():
            break
        taker.poll()
    while commands.handle():
        pass


class _Commands:
    """The parent's commands on stdin ("mark", "stop"), each answered with one JSON line."""

    def __init__(self) -> None:
        self.mark = time.process_time()
        self.mark_thread = time.thread_time()
        self.on_stop: list[Callable[[], None]] = []
        self.extra: Callable[[], dict[str, Any]] = dict

    def reply(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def handle(self) -> bool:
        """Run one command; False after "stop" (or a closed stdin)."""
        line = sys.stdin.readline().strip()
        if line == "mark":
            self.mark, self.mark_thread = time.process_time(), time.thread_time()
            self.reply({"marked": True})
            return True
        cpu = time.process_time() - self.mark
        # The main thread's share: for a ring relay its loop, produce() calls and delivery
        # callbacks; the rest is librdkafka's threads.
        main = time.thread_time() - self.mark_thread
        for stop in self.on_stop:
            stop()
        self.reply({"cpu": cpu, "main_thread_cpu": main, **self.extra()})
        return False


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer  # noqa: PLC0415 - child processes only

    from kafka_relay.producer.factory import DEFAULTS  # noqa: PLC0415

    return Producer({**DEFAULTS, "bootstrap.servers": bootstrap})


def _assemble(spec: dict[str, Any], *, journal: bool) -> Any:
    import io  # noqa: PLC0415 - the relay process only

    from kafka_relay.app import assemble  # noqa: PLC0415
    from kafka_relay.aws_lambda import INVOKE, SHUTDOWN  # noqa: PLC0415
    from kafka_relay.config import load_config  # noqa: PLC0415
    from kafka_relay.observability.log import JsonLogger  # noqa: PLC0415

    work = Path(spec["dir"])
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": spec["bootstrap"],
                          "KAFKA_TOPIC": spec["topic"], "KAFKA_RELAY_TOKEN": _TOKEN,
                          "KAFKA_RELAY_PORT": str(spec["port"]),
                          "KAFKA_RELAY_SPOOL_DIR": str(work / "spool"),
                          "KAFKA_RELAY_JOURNAL_DIR": str(work / "journal"),
                          "KAFKA_RELAY_JOURNAL": "true" if journal else "false",
                          "KAFKA_RELAY_TELEMETRY": "false"})
    return assemble(config, JsonLogger(stream=io.StringIO(), level="ERROR"), (INVOKE, SHUTDOWN))


def relay_main(spec: dict[str, Any]) -> None:
    path, commands = spec["path"], _Commands()
    _pin(spec)
    if path == "http":
        parts = _assemble(spec, journal=True)
        commands.on_stop += [parts.engine.stop, parts.server.stop]
        commands.reply({"ready": parts.config.port})
        while commands.handle():
            pass
        return
    ring_path = Path(spec["dir"]) / "relay.ring"
    ring_file = ring.new_ring(ring_path, _RING_BYTES)
    taker: _Taker
    if path == "ring-engine":
        parts = _assemble(spec, journal=False)
        commands.on_stop += [parts.engine.stop, parts.server.stop]
        taker = _EngineTaker(ring_file, parts)
    elif path == "ring":
        taker = _PythonTaker(ring_file, _producer(spec["bootstrap"]), spec["topic"])
    elif path == "ring-c":
        taker = _AccelTaker(ring_file, _producer(spec["bootstrap"]), spec["topic"],
                            accel.load(Path(spec["accel"])))
    else:
        from kafka_relay.producer.factory import DEFAULTS  # noqa: PLC0415 - relay only

        settings = {name: str(value).lower() if isinstance(value, bool) else str(value)
                    for name, value in DEFAULTS.items()}
        taker = _RdTaker(ring_file, spec["topic"], accel.load(Path(spec["accel"])),
                         accel.load_rdkafka(Path(spec["rdkafka"])),
                         {**settings, "bootstrap.servers": spec["bootstrap"]})
    commands.extra = lambda: {"failed": taker.failed,
                              "consumed": ring_file.consumed, "written": ring_file.written}
    _serve_ring(taker, str(Path(spec["dir"]) / "relay.sock"), commands)


# -- the client process (the handler's side) ----------------------------------------------


class _Client:
    """Hands one invocation's records over (``send``) and delivers the rest (``finish``)."""

    def __init__(self, spec: dict[str, Any], ready: Any) -> None:
        path, self.topic = spec["path"], spec["topic"]
        self.delivered = 0
        if path == "inproc":
            self.producer = _producer(spec["bootstrap"])
            self.send: Callable[[list[dict[str, Any]]], object] = self._produce_and_flush
            self.finish: Callable[[], int] = lambda: int(self.producer.flush(30))
        elif path == "http":
            from kafka_relay.client import RelayClient  # noqa: PLC0415
            from kafka_relay.ring import RING_ENV  # noqa: PLC0415

            client = RelayClient(env={RING_ENV: "false"}, port=int(ready), token=_TOKEN)
            self.send = client.send
            self.finish = lambda: int(client.flush()["remaining"])
        else:
            from kafka_relay.protocol import _chunks, encode_frames  # noqa: PLC0415

            writer = ring.RingWriter(Path(spec["dir"]) / "relay.ring", str(ready))
            self.finish = writer.flush
            if path in ("ring-c", "ring-rd"):
                encode = accel.load(Path(spec["accel"])).encode

                def send(records: list[dict[str, Any]]) -> None:
                    writer.send(encode(records, _chunks) or encode_frames(records))
            else:
                def send(records: list[dict[str, Any]]) -> None:
                    writer.send(encode_frames(records))
            self.send = send

    def _produce_and_flush(self, records: list[dict[str, Any]]) -> None:
        produce, topic, dumps = self.producer.produce, self.topic, json.dumps
        for record in records:
            produce(topic, key=record["key"], on_delivery=self._on_delivery,
                    value=dumps(record["value"], separators=(",", ":")).encode())
        self.producer.flush(30)

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is None:
            self.delivered += 1


def client_main(spec: dict[str, Any]) -> None:
    _pin(spec)
    commands = _Commands()
    count, size = spec["count"], spec["size"]
    batches = [workload(n, count, size) for n in range(spec["invocations"] + 1)]
    ready = json.loads(sys.stdin.readline())  # where the relay listens, once it does
    client = _Client(spec, ready)
    client.send(batches[0])  # warm: connections, metadata, first-use allocations
    client.finish()
    commands.reply({"warm": True})
    if sys.stdin.readline().strip() != "go":
        return
    cpu, thread, wall = time.process_time(), time.thread_time(), time.perf_counter()
    for batch in batches[1:]:
        client.send(batch)
    handed = time.perf_counter() - wall
    left = client.finish()
    commands.reply({"cpu": time.process_time() - cpu, "wall": handed, "left": left,
                    "main_thread_cpu": time.thread_time() - thread,
                    "delivered_wall": time.perf_counter() - wall})


def _pin(spec: dict[str, Any]) -> None:
    """Without a cgroup quota, the 1-vCPU bound is both processes on the same core."""
    if spec.get("pin") is not None:
        os.sched_setaffinity(0, {int(spec["pin"])})


# -- the parent: one measurement, many, the table -----------------------------------------


Wrap = Callable[[str, list[str]], list[str]]


def _unwrapped(_kind: str, argv: list[str]) -> list[str]:
    return argv


class Role:
    """A client or relay process of ``spec``, speaking JSON lines; every answer is waited for
    at most _ANSWER_S. The relay's first line says where it listens (``ready``)."""

    def __init__(self, role: str, spec: dict[str, Any], wrap: Wrap = _unwrapped) -> None:
        self.role = f"{spec['path']} {role}"
        argv = [sys.executable, "-m", "bench.alternatives", "--role", role, json.dumps(spec)]
        paths = [str(_ROOT), str(_ROOT / "extension"), os.environ.get("PYTHONPATH", "")]
        self.process = subprocess.Popen(
            wrap("extensions" if role == "relay" else "runtime", argv), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=_ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)})

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], _ANSWER_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"{self.role} did not answer (exit "
                               f"{self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Sample:
    path: str
    scenario: str
    topic: str
    records: int  # measured records (the warm-up's not counted)
    given: int  # every record the path was given, warm-up included
    given_bytes: int  # their keys' and values' bytes
    client_cpu_s: float
    relay_cpu_s: float
    wall_s: float  # the invocations' (handed over)
    delivered_wall_s: float  # and the final flush (all delivered)
    bound: str  # what bounded the CPU: a cgroup quota, pinning, or nothing
    client_main_thread_cpu_s: float  # the rest of the client's: librdkafka's threads (inproc)
    relay: dict[str, Any] = field(default_factory=dict)  # its main thread's CPU, its counts
    on_topic: int = -1  # records the topic holds after the run (-1: not read yet)
    on_topic_bytes: int = -1  # their keys' and values' bytes

    @property
    def us_per_record(self) -> float:
        return (self.client_cpu_s + self.relay_cpu_s) / self.records * 1e6

    @property
    def rate(self) -> float:
        return self.records / self.wall_s


@contextmanager
def _bound(vcpus: float | None) -> Iterator[tuple[Wrap, str]]:
    """How to start a process under the quota (wrap), and what bounds the CPU (said once)."""
    group = EnvironmentCgroup.create(vcpus, label=_CGROUP_LABEL)
    if isinstance(group, str):
        yield _unwrapped, f"no cgroup ({group})"
        return
    try:
        yield group.wrap, f"cgroup quota {group.quota()}" if vcpus else "no quota"
    finally:
        group.remove()


def on_topics(bootstrap: str, topics: Sequence[str], *,
              timeout: float = 60.0) -> dict[str, tuple[int, int]]:
    """Per topic, (records, key + value bytes) on its partition 0, read to its end by one
    consumer. Read, not the high watermark: the local broker counts offsets its own way."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "alternatives-check",
                         "enable.partition.eof": True, "enable.auto.commit": False,
                         "fetch.wait.max.ms": 50})
    found = dict.fromkeys(topics, (0, 0))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING) for topic in topics])
        deadline = time.monotonic() + timeout
        open_topics = set(topics)
        while open_topics and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.1):
                error, topic = message.error(), str(message.topic())
                if error is None:
                    count, size = found[topic]
                    found[topic] = (count + 1, size + len(message.key() or b"")
                                    + len(message.value() or b""))
                elif error.code() == KafkaError._PARTITION_EOF:
                    open_topics.discard(topic)
        return found
    finally:
        consumer.close()


def given_bytes(scenario: Scenario) -> int:
    """Key + value bytes of every record a path is given in ``scenario``, warm-up included."""
    return sum(len(r["key"]) + len(value_bytes(r["value"]))
               for n in range(scenario.invocations + 1)
               for r in workload(n, scenario.per_invocation, scenario.size))


def role_spec(path: str, scenario: Scenario, *, bootstrap: str, topic: str, workdir: Path,
              accel_path: Path | None, rdkafka_path: Path | None = None) -> dict[str, Any]:
    """What a client or relay process of ``path`` is told (its run directory made here)."""
    return {"path": path, "bootstrap": bootstrap, "topic": topic,
            "dir": tempfile.mkdtemp(prefix=f"{path}-", dir=workdir), "port": free_port(),
            "count": scenario.per_invocation, "size": scenario.size,
            "invocations": scenario.invocations,
            "accel": str(accel_path) if accel_path else None,
            "rdkafka": str(rdkafka_path) if rdkafka_path else None}


def measure(path: str, scenario: Scenario, *, bootstrap: str, workdir: Path,
            accel_path: Path | None, topic: str, rdkafka_path: Path | None = None) -> Sample:
    """One measurement of ``path``: fresh processes, a fresh topic."""
    create_topics(bootstrap, [topic])
    spec = role_spec(path, scenario, bootstrap=bootstrap, topic=topic, workdir=workdir,
                     accel_path=accel_path, rdkafka_path=rdkafka_path)
    with _bound(scenario.vcpus) as (wrap, what):
        bound = what
        if scenario.vcpus is not None and bound.startswith("no cgroup"):
            spec["pin"] = min(os.sched_getaffinity(0))
            bound += f": client and relay pinned to core {spec['pin']}"
        # Both start at once (imports, the workload); the client connects once the relay
        # says where it listens.
        relay = Role("relay", spec, wrap) if path in RELAYED else None
        client = Role("client", spec, wrap)
        try:
            client.ask(json.dumps(relay.read()["ready"] if relay is not None else None))
            if relay is not None:
                relay.ask("mark")
            result = client.ask("go")
            relay_result = relay.ask("stop") if relay is not None else {"cpu": 0.0}
        finally:
            for role in (client, relay):
                if role is not None:
                    role.close()
    records = scenario.per_invocation * scenario.invocations
    return Sample(path=path, scenario=scenario.name, topic=topic, records=records,
                  given=records + scenario.per_invocation, given_bytes=given_bytes(scenario),
                  client_cpu_s=result["cpu"], relay_cpu_s=relay_result.pop("cpu"),
                  wall_s=result["wall"], delivered_wall_s=result["delivered_wall"],
                  bound=bound, client_main_thread_cpu_s=result["main_thread_cpu"],
                  relay=relay_result)


# -- the accelerator's per-record cost, in process ------------------------------------------


def micro(module: accel.Accel, bootstrap: str, topic: str, *, count: int = 100,
          size: int = 1024, repeat: int = 40) -> dict[str, float]:
    """CPU µs per record of the calling thread (the best of ``repeat`` interleaved rounds:
    other work on the machine only adds time) of the steps the accelerator replaces, and of
    ``produce()`` itself (librdkafka's threads not counted)."""
    from kafka_relay.handoff.schema import records_from_body  # noqa: PLC0415
    from kafka_relay.protocol import FRAMES_TYPE, _chunks, encode_frames  # noqa: PLC0415
    from kafka_relay.record import IdSource  # noqa: PLC0415

    records = workload(0, count, size)
    body = encode_frames(records)
    ids = IdSource()
    producer = _producer(bootstrap)
    settle = module.Settle(0)

    def produce_bare() -> None:
        for record in records:
            producer.produce(topic, value=record["value"]["pad"].encode(),
                             key=record["key"].encode())

    def produce_relayed() -> None:
        module.produce_all(body, 0, producer.produce, topic, ids.prefix, 1, settle)

    steps: dict[str, Callable[[], object]] = {
        "json.dumps per value (the in-handler producer's)": lambda: [
            value_bytes(r["value"]) for r in records],
        "encode_frames (Python: the client today)": lambda: encode_frames(records),
        "encode (C)": lambda: module.encode(records, _chunks),
        "decode_frames (Python, the lean relay)": lambda: ring.decode_frames(body),
        "decode + validate + Records (the handoff today)": lambda: records_from_body(
            body, FRAMES_TYPE, default_topic="t", new_ids=ids.take, request_id=None, now_ms=0),
        "check (C: decode + validate)": lambda: module.check(body, True),
        "produce(): key and value only": produce_bare,
        "produce_all (C): + x-relay-id header, callback": produce_relayed,
    }
    best = dict.fromkeys(steps, float("inf"))
    clock = time.thread_time
    for _ in range(repeat):
        for name, step in steps.items():
            start = clock()
            step()
            best[name] = min(best[name], clock() - start)
            producer.flush(30)  # the next round starts with an empty queue
    return {name: seconds / count * 1e6 for name, seconds in best.items()}


# -- the run and its table ------------------------------------------------------------------


def run(args: argparse.Namespace, bootstrap: str, workdir: Path,
        say: Callable[[str], None]) -> dict[str, Any]:
    accel_path = accel.build(workdir) if {"ring-c", "ring-rd"} & set(args.paths) else None
    rdkafka_path = accel.build_rdkafka(workdir) if "ring-rd" in args.paths else None
    samples: list[Sample] = []
    token = os.urandom(3).hex()
    chosen = [s for s in scenarios(args.quick, args.scale)
              if s.name.split()[0] in args.scenarios]
    for scenario in chosen:
        for rep in range(args.reps):
            order = args.paths[rep % len(args.paths):] + args.paths[:rep % len(args.paths)]
            for path in order:
                topic = f"alt-{token}-{path}-{scenario.per_invocation}x{scenario.size}-{rep}"
                sample = measure(path, scenario, bootstrap=bootstrap, workdir=workdir,
                                 accel_path=accel_path, rdkafka_path=rdkafka_path,
                                 topic=topic)
                samples.append(sample)
                say(f"  {scenario.name} rep {rep + 1} {path:12s} {sample.us_per_record:6.1f} "
                    f"us/record, {sample.rate:8,.0f} records/s")
    found = on_topics(bootstrap, [s.topic for s in samples])
    for sample in samples:
        sample.on_topic, sample.on_topic_bytes = found[sample.topic]
    micro_topic = f"alt-{token}-micro"
    create_topics(bootstrap, [micro_topic])
    micro_us = micro(accel.load(accel_path), bootstrap, micro_topic) if accel_path else {}
    return {"options": {"quick": args.quick, "reps": args.reps, "paths": args.paths,
                        "scenarios": [s._asdict() for s in chosen],
                        "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "samples": [asdict(s) for s in samples], "micro_us_per_record": micro_us}


def table(samples: Sequence[Sample], paths: Sequence[str]) -> list[str]:
    """Per scenario and path: medians (ranges) of CPU per record, ratio to inproc from the
    same repetition, and the handoff rate."""
    lines = []
    for name in dict.fromkeys(s.scenario for s in samples):
        of = [s for s in samples if s.scenario == name]
        lines.append(f"{name} ({of[0].bound}): client + relay us/record | ÷ inproc, same rep "
                     "| handed over, delivered records/s")
        base = [s for s in of if s.path == "inproc"]
        for path in paths:
            mine = [s for s in of if s.path == path]
            if not mine:
                continue
            ratios = [m.us_per_record / b.us_per_record for m, b in zip(mine, base, strict=False)]
            lines.append(
                f"  {path:12s} {_spread([m.client_cpu_s / m.records * 1e6 for m in mine])} + "
                f"{_spread([m.relay_cpu_s / m.records * 1e6 for m in mine])} = "
                f"{_spread([m.us_per_record for m in mine])} | {_spread(ratios, '.2f')}x | "
                f"{_spread([m.rate / 1000 for m in mine], '.0f')}k, "
                f"{_spread([m.records / m.delivered_wall_s / 1000 for m in mine], '.0f')}k")
    return lines


def _spread(values: Sequence[float], spec: str = ".1f") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def lost(samples: Sequence[Sample]) -> list[str]:
    """Every measurement whose topic does not hold exactly the records it was given."""
    return [f"{s.path} {s.scenario}: {s.on_topic} records ({s.on_topic_bytes} B) on the topic "
            f"for {s.given} ({s.given_bytes} B) given; relay: {s.relay}"
            for s in samples if (s.on_topic, s.on_topic_bytes) != (s.given, s.given_bytes)
            or s.relay.get("failed")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alternatives",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=("client", "relay"), help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="2 repetitions of a fifth of the invocations")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (5, --quick 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="invocations x this")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIO_KEYS,
                        default=list(SCENARIO_KEYS), help="which scenarios (default: all)")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--results", type=Path, default=_ROOT / "bench" / "results",
                        help="where the JSON goes (default bench/results)")
    args = parser.parse_args(argv)
    if args.role:
        (client_main if args.role == "client" else relay_main)(json.loads(args.spec))
        return 0
    if "inproc" not in args.paths:
        args.paths.insert(0, "inproc")  # every ratio is against it
    args.reps = args.reps or (2 if args.quick else 5)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="alternatives-") as tmp:
        if args.bootstrap:
            results = run(args, args.bootstrap, Path(tmp), say)
        else:
            with KafkaBroker() as broker:
                results = run(args, broker.bootstrap, Path(tmp), say)
    samples = [Sample(**s) for s in results["samples"]]
    print("\n".join(table(samples, args.paths)))
    for step, us in results["micro_us_per_record"].items():
        print(f"  {step:48s} {us:5.2f} us/record")
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.results / f"alternatives-{stamp}.json").write_text(json.dumps(results, indent=1))
    problems = lost(samples)
    for problem in problems:
        print(f"NOT EXACT: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
