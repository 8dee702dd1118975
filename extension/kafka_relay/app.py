"""Assemble the extension after registration: config → mode → engine → handoff server.

This module imports confluent-kafka, so ``__main__`` imports it only once the
extension has registered (Lambda measures init from process start).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

from confluent_kafka import KafkaError

from kafka_relay import __version__
from kafka_relay.config import MSK_IAM, Config, msk_listener
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.errors import AuthError, RelayError
from kafka_relay.handoff.idempotency import IdempotencyCache
from kafka_relay.handoff.server import HandoffServer, HandoffState
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.lifecycle.telemetry import TelemetryReceiver, subscribe
from kafka_relay.modes.mode import Mode, mode_for
from kafka_relay.observability.log import JsonLogger, LibrdkafkaLog
from kafka_relay.producer.classify import describe, is_auth_failure
from kafka_relay.producer.credentials import on_thaw
from kafka_relay.producer.factory import ProducerFactory
from kafka_relay.spill.sinks import SpillChain

# librdkafka's "nobody answers" errors: the init probe need not wait out its timeout.
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                          KafkaError._RESOLVE})


class Parts:
    """The assembled extension: what ``__main__`` runs and tests inspect."""

    __slots__ = ("config", "engine", "logger", "mode", "server")

    def __init__(self, *, config: Config, engine: DeliveryEngine, server: HandoffServer,
                 mode: Mode, logger: JsonLogger) -> None:
        self.config = config
        self.engine = engine
        self.server = server
        self.mode = mode
        self.logger = logger


def assemble(config: Config, logger: JsonLogger, events: Collection[str], *,
             api: ExtensionsApi | None = None) -> Parts:
    """Everything but the event loop, for the mode ``events`` (what Lambda accepted the
    registration for) and ``config`` decide. Without ``api`` (tests) there is no Telemetry."""
    auth_errors: list[KafkaError] = []
    transport_errors: list[KafkaError] = []

    def on_client_error(error: KafkaError) -> None:
        if is_auth_failure(error):
            auth_errors.append(error)
        elif error.code() in _UNREACHABLE:
            transport_errors.append(error)
        engine.on_client_error(error)

    # A configuration librdkafka refuses is a ConfigError from the factory.
    make_producer = ProducerFactory(config, error_cb=on_client_error,
                                    logger=LibrdkafkaLog(logger))
    spill = SpillChain.from_config(config, logger)
    kind = mode_for(events, config)
    engine = DeliveryEngine(config, producer_factory=make_producer, spill=spill, logger=logger,
                            defer_producer=kind.defers_producer,
                            on_thaw=on_thaw(make_producer.credentials, logger))
    mode = kind(config, engine, logger)
    if not kind.defers_producer:  # SnapStart: no producer, no probe before the snapshot
        engine.start()
        try:
            _probe(engine, auth_errors, transport_errors, config, logger)
        except AuthError:
            engine.stop()
            raise
    spill.warm()

    state = HandoffState(config=config, relay=mode.port, signals=mode.signals, logger=logger,
                         ids=mode.ids, started=time.monotonic(), idempotency=IdempotencyCache(),
                         flush_strategy=str(config.flush), admit=mode.admit,
                         flush_control=lambda: mode.listener.flush_control,
                         reprobe=lambda timeout_s: engine.reachability.reprobe(
                             timeout_s, mode.listener.flush_control.get("breaker")),
                         broker_gone=engine.reachability.gone)
    try:
        server = HandoffServer(state)
    except RelayError:
        engine.stop()
        raise
    server.start()
    mode.listener.publish({"breaker": {"state": "closed"}, "deferring": False,
                           "max_latency_ms": config.max_latency_ms})
    mode.listener.closers.append(server.stop)
    parts = Parts(config=config, engine=engine, server=server, mode=mode, logger=logger)
    if config.telemetry and api is not None:
        _subscribe(mode, api, logger)
    # cpu_ms: this process's CPU since it started (every thread), the cold start's own cost.
    logger.info("init.ready", version=__version__, port=server.port, flush=str(config.flush),
                cpu_ms=round(time.process_time() * 1000, 1),
                bootstrap=config.bootstrap_servers, protocol=config.security_protocol,
                broker_state=engine.status()["broker_state"], mode=mode.name.value,
                **mode.init_fields())
    return parts


def _probe(engine: DeliveryEngine, auth_errors: list[KafkaError],
           transport_errors: list[KafkaError], config: Config, logger: JsonLogger) -> None:
    """Open the first broker connection now (warm for the first invoke) and catch bad creds.
    A refused or unresolvable broker ends the probe at once: init does not wait for it."""
    ended_by: list[str] = []

    def unreachable() -> str | None:
        if auth_errors:
            ended_by.append("auth_error")
            return describe(auth_errors[0])
        if transport_errors:
            ended_by.append("transport_error")
            return describe(transport_errors[-1])
        return None

    started = time.monotonic()
    error = engine.probe(config.init_probe_ms / 1000, unreachable=unreachable)
    if error is not None and not auth_errors:
        engine.reachability.init_error = error  # said by invocation.done until it answers
        logger.warning("init.broker_unreachable", error=error, bootstrap=config.bootstrap_servers,
                       probe_ended_by=ended_by[0] if ended_by else "timeout",
                       probe_ms=round((time.monotonic() - started) * 1000))
    if auth_errors:
        raise AuthError(f"Kafka refused the credentials ({describe(auth_errors[0])}) of "
                        f"KAFKA_AUTH={config.auth}: {_auth_fix(config)}")


def _auth_fix(config: Config) -> str:
    """What to check when the cluster refuses the credentials, for each KAFKA_AUTH."""
    if config.auth == MSK_IAM:
        return (f"the execution role needs kafka-cluster:Connect, kafka-cluster:DescribeTopic, "
                f"kafka-cluster:WriteData and kafka-cluster:WriteDataIdempotently on the "
                f"cluster and its topics, the brokers must be the IAM listener "
                f"({msk_listener(MSK_IAM)}) and AWS_REGION={config.region} the cluster's "
                f"region")
    listener = f"; on MSK the SCRAM listener ({msk_listener('scram')})" if (
        config.auth == "scram") else ""
    return (f"check KAFKA_API_KEY/KAFKA_API_SECRET (or the secret in KAFKA_SECRET_ARN), "
            f"KAFKA_SASL_MECHANISM={config.sasl_mechanism} and KAFKA_SECURITY_PROTOCOL="
            f"{config.security_protocol}{listener}")


def _subscribe(mode: Mode, api: ExtensionsApi, logger: JsonLogger) -> None:
    """Telemetry: each request's end, and a restore from a snapshot in any mode (restored off
    the receiver's thread: building a producer may read a secret)."""
    def on_request_done(request_id: str, status: str) -> None:
        mode.signals.mark_done(request_id)

    def on_restore() -> None:
        threading.Thread(target=mode.restore, args=("telemetry",), name="kafka-relay-restore",
                         daemon=True).start()

    try:
        receiver = TelemetryReceiver(on_request_done, on_restore=on_restore,
                                     read_later=mode.signals.mark_later)
        uri = receiver.start()
        subscribe(api, uri, types=["platform"], mode=mode.name, logger=logger)
        mode.listener.closers.insert(0, receiver.stop)
        mode.listener.telemetry = True
    except Exception as exc:
        # The client's end call still works; only the fallback signal is lost.
        logger.warning("telemetry.unavailable", error=str(exc))
