"""What the extension checks and opens before the rest is assembled (``app.assemble``).

Lambda counts an extension's init up to its first ``/next``, and on demand the invocation
that started the environment waits behind it. So there the extension first checks what it
can by itself and binds what must be its own, then sends ``/next``, then assembles the
delivery engine, the mode, the broker probe and the handoff server while the first records
wait in the handoff port's listen backlog (``aws_lambda.ready_before_assembly`` decides when;
``__main__`` runs the steps). Found before ``/next`` (an init error): the configuration, a
layer for another runtime, settings librdkafka refuses, a secret that cannot be read, a
taken handoff port. The ring transport's socket is bound here too (its handlers' first
messages wait in its backlog the same way). Found after it (``/exit/error``, the same type
and message): credentials the broker refuses. Everywhere else ``assemble`` calls
``prepare`` itself, before the rest.

Imports nothing the delivery engine, the modes or the handoff server need.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError, Producer

from kafka_relay.config import Config, LambdaMode
from kafka_relay.handoff.port import listen, listen_ring
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.lifecycle.telemetry import TelemetryReceiver, subscribe
from kafka_relay.observability.log import JsonLogger, LibrdkafkaLog
from kafka_relay.producer.classify import is_auth_failure
from kafka_relay.producer.factory import ProducerFactory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kafka_relay.modes.mode import Mode

# librdkafka's "nobody answers" errors: the init probe need not wait out its timeout.
UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                         KafkaError._RESOLVE})


class ClientErrors:
    """librdkafka's error callback: credential and transport errors kept for the init probe,
    each error passed on to the engine (held until ``attach``; confluent-kafka calls back
    only from ``poll``/``flush``, which nothing runs before the engine exists)."""

    def __init__(self) -> None:
        self.auth: list[KafkaError] = []
        self.transport: list[KafkaError] = []
        self._to: Callable[[KafkaError], None] | None = None
        self._held: list[KafkaError] = []

    def __call__(self, error: KafkaError) -> None:
        if is_auth_failure(error):
            self.auth.append(error)
        elif error.code() in UNREACHABLE:
            self.transport.append(error)
        if self._to is None:
            self._held.append(error)
        else:
            self._to(error)

    def attach(self, to: Callable[[KafkaError], None]) -> None:
        self._to = to
        held, self._held = self._held, []
        for error in held:
            to(error)


class ModeSlot:
    """The Telemetry receiver's callbacks, bound to the mode once it exists; the receiver's
    thread starts only after that (``Prepared.start_telemetry``)."""

    def __init__(self) -> None:
        self.mode: Mode | None = None

    def _bound(self) -> Mode:
        assert self.mode is not None, "the receiver starts after the mode is bound"
        return self.mode

    def request_done(self, request_id: str, status: str) -> None:
        self._bound().signals.mark_done(request_id)

    def read_later(self, read: Callable[[], None]) -> None:
        self._bound().signals.mark_later(read)

    def restore(self) -> None:
        """Off the receiver's thread: building a producer may read a secret."""
        threading.Thread(target=self._bound().restore, args=("telemetry",),
                         name="kafka-relay-restore", daemon=True).start()


class Prepared:
    """The handoff port bound, the producer factory (and, unless deferred, its first producer),
    the Telemetry receiver subscribed but not yet serving."""

    def __init__(self, *, listening: socket.socket, make_producer: ProducerFactory,
                 errors: ClientErrors, first_producer: Producer | None,
                 telemetry: TelemetryReceiver | None, slot: ModeSlot,
                 ring_listening: socket.socket | None = None) -> None:
        self.listening = listening
        self.ring_listening = ring_listening  # None: the ring transport is off
        self.make_producer = make_producer
        self.errors = errors
        self._first = first_producer
        self.telemetry = telemetry
        self.slot = slot
        self.ready_cpu_ms: float | None = None  # this process's CPU when /next went out early

    def producer_factory(self) -> Producer:
        """The engine's factory: the producer built here first, then new ones."""
        first, self._first = self._first, None
        return first if first is not None else self.make_producer()

    def start_telemetry(self, mode: Mode) -> None:
        """Serve Telemetry for ``mode``, stopped with it."""
        if self.telemetry is None:
            return
        self.slot.mode = mode
        self.telemetry.start()
        mode.listener.closers.insert(0, self.telemetry.stop)
        mode.listener.telemetry = True

    def close(self) -> None:
        """An init that fails after this: release the port and the receiver's socket."""
        self.listening.close()
        if self.ring_listening is not None:
            self.ring_listening.close()
        if self.telemetry is not None:
            self.telemetry.stop()


def prepare(config: Config, logger: JsonLogger, *, build_producer: bool, mode: LambdaMode,
            api: ExtensionsApi | None) -> Prepared:
    """Bind the handoff port, build the producer factory (reading a secret) and, when
    ``build_producer`` (not before a SnapStart snapshot), its first producer; subscribe to
    Telemetry when configured and ``api`` is given (tests pass none). RelayError: init fails."""
    listening = listen("127.0.0.1", config.port)
    try:
        errors = ClientErrors()
        # A configuration librdkafka refuses is a ConfigError from the factory.
        make_producer = ProducerFactory(config, error_cb=errors, logger=LibrdkafkaLog(logger))
        first = make_producer() if build_producer else None
    except BaseException:
        listening.close()
        raise
    slot = ModeSlot()
    telemetry = (_subscribe(api, slot, mode, logger)
                 if config.telemetry and api is not None else None)
    return Prepared(listening=listening, make_producer=make_producer, errors=errors,
                    first_producer=first, telemetry=telemetry, slot=slot,
                    ring_listening=listen_ring(config, logger))


def _subscribe(api: ExtensionsApi, slot: ModeSlot, mode: LambdaMode,
               logger: JsonLogger) -> TelemetryReceiver | None:
    """Telemetry: each request's end, and a restore from a snapshot in any mode. None when
    unavailable: the client's end call still works; only the fallback signal is lost."""
    receiver: TelemetryReceiver | None = None
    try:
        receiver = TelemetryReceiver(slot.request_done, on_restore=slot.restore,
                                     read_later=slot.read_later)
        subscribe(api, receiver.uri, types=["platform"], mode=mode, logger=logger)
    except Exception as exc:
        if receiver is not None:
            receiver.stop()
        logger.warning("telemetry.unavailable", error=str(exc))
        return None
    return receiver
