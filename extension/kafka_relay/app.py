"""Assemble the extension after registration: config → producer → relay → servers.

This module imports confluent-kafka, so ``__main__`` imports it only once the
extension has registered (Lambda measures init from process start).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError

from kafka_relay.config import MSK_IAM, Config, LambdaMode
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.delivery.probe import probe_broker
from kafka_relay.errors import AuthError, RelayError
from kafka_relay.handoff.server import HandoffServer, HandoffState
from kafka_relay.handoff.signals import HandlerSignals
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.lifecycle.loop import EventLoop
from kafka_relay.lifecycle.managed import BackgroundLoop
from kafka_relay.lifecycle.modes import shutdown_only, subscribe
from kafka_relay.lifecycle.telemetry import TelemetryListener
from kafka_relay.modes.parts import ModeParts
from kafka_relay.observability.log import JsonLogger, librdkafka_logger
from kafka_relay.producer.classify import describe, is_auth_failure
from kafka_relay.producer.credentials import MskIam
from kafka_relay.producer.factory import ProducerFactory
from kafka_relay.relay_listener import RelayListener
from kafka_relay.spill.sinks import SpillChain

# librdkafka's "nobody answers" errors: the init probe need not wait out its timeout.
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                          KafkaError._RESOLVE})


@dataclass
class Parts:
    """The assembled extension: what the event loop drives and tests inspect."""

    config: Config
    relay: DeliveryEngine
    server: HandoffServer
    signals: HandlerSignals
    listener: RelayListener
    logger: JsonLogger
    modes: ModeParts

    def event_loop(self, api: ExtensionsApi | None = None) -> EventLoop:
        return EventLoop(self.listener, self.config, self.logger, api=api)

    def background_loop(self, api: ExtensionsApi) -> BackgroundLoop | None:
        """The SHUTDOWN-only loop when Lambda sends no INVOKE (managed instances), else None."""
        return self.modes.background_loop(self.listener, self.relay, self.logger,
                                          api)


def assemble(config: Config, logger: JsonLogger, *, api: ExtensionsApi | None = None) -> Parts:
    """Everything but the event loop. Without ``api`` (tests) there is no telemetry."""
    auth_errors: list[KafkaError] = []
    transport_errors: list[KafkaError] = []

    def on_client_error(error: KafkaError) -> None:
        if is_auth_failure(error):
            auth_errors.append(error)
        elif error.code() in _UNREACHABLE:
            transport_errors.append(error)
        relay.on_client_error(error)

    # A configuration librdkafka refuses is a ConfigError from the factory.
    make_producer = ProducerFactory(config, error_cb=on_client_error,
                                    logger=librdkafka_logger(logger))
    spill = SpillChain.from_config(config, logger)
    background = (config.mode is LambdaMode.MANAGED_INSTANCES if api is None
                  else shutdown_only(api.events))
    snap_start = config.mode is LambdaMode.SNAP_START and not background
    strategy = make_producer.credentials
    relay = DeliveryEngine(config, producer_factory=make_producer, spill=spill, logger=logger,
                           defer_producer=snap_start,
                           on_thaw=strategy.thaw_check(logger)
                           if isinstance(strategy, MskIam) else None)
    modes = ModeParts.create(config, relay, logger, background=background)
    if not modes.defers_producer:  # SnapStart: no producer, no probe before the snapshot
        relay.start()
        try:
            _probe(relay, auth_errors, transport_errors, config, logger)
        except AuthError:
            relay.stop()
            raise
    spill.warm()

    signals = modes.signals
    state = HandoffState(config=config, relay=modes.port, signals=signals, logger=logger,
                         ids=modes.ids, started=time.monotonic(),
                         flush_strategy=str(config.flush), admit=modes.admit())
    modes.wire(state)
    try:
        server = HandoffServer(state)
    except RelayError:
        relay.stop()
        raise
    server.start()
    listener = modes.relay_listener(config=config, engine=relay, signals=signals, logger=logger)
    listener.publish({"breaker": {"state": "closed"}, "deferring": False,
                      "max_latency_ms": config.max_latency_ms})
    listener.closers.append(server.stop)
    parts = Parts(config=config, relay=relay, server=server, signals=signals,
                  listener=listener, logger=logger, modes=modes)
    if config.telemetry and api is not None:
        _subscribe(parts, api, logger)
    # cpu_ms: this process's CPU since it started (every thread), the cold start's own cost.
    logger.info("init.ready", port=server.port, flush=str(config.flush),
                cpu_ms=round(time.process_time() * 1000, 1),
                bootstrap=config.bootstrap_servers, protocol=config.security_protocol,
                broker_state=relay.broker_state.value, mode=modes.mode.value,
                **({"init_id_prefix": modes.init_id_prefix} if modes.init_id_prefix else {}))
    return parts


def _probe(relay: DeliveryEngine, auth_errors: list[KafkaError],
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
    error = probe_broker(relay.pump, config.init_probe_ms / 1000, unreachable=unreachable)
    if error is not None and not auth_errors:
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
                f"cluster and its topics, the brokers must be the IAM listener (port 9098) and "
                f"AWS_REGION={config.region} the cluster's region")
    return (f"check KAFKA_API_KEY/KAFKA_API_SECRET (or the secret in KAFKA_SECRET_ARN), "
            f"KAFKA_SASL_MECHANISM={config.sasl_mechanism} and KAFKA_SECURITY_PROTOCOL="
            f"{config.security_protocol}")


def _subscribe(parts: Parts, api: ExtensionsApi, logger: JsonLogger) -> None:
    def on_runtime_done(request_id: str, status: str) -> None:
        parts.signals.mark_done(request_id)

    try:
        listener = TelemetryListener(on_runtime_done, on_restore=parts.modes.on_restore())
        uri = listener.start()
        subscribe(api, uri, types=["platform"], mode=parts.modes.mode, logger=logger)
        parts.listener.closers.insert(0, listener.stop)
        parts.listener.telemetry = True
    except Exception as exc:
        # The client's end call still works; only the fallback signal is lost.
        logger.warning("telemetry.unavailable", error=str(exc))
