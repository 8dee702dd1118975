"""Assemble the extension after registration: config → mode → engine → handoff server.

This module imports confluent-kafka, so ``__main__`` imports it only once the
extension has registered (Lambda measures init from process start); on demand, only
after its first ``/next`` (``prepare.py``).
"""

from __future__ import annotations

import time
from collections.abc import Collection

from kafka_relay import __version__
from kafka_relay.config import MSK_IAM, Config, msk_listener
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.errors import AuthError, RelayError
from kafka_relay.handoff.idempotency import IdempotencyCache
from kafka_relay.handoff.ring_listener import RingListener, ring_reader
from kafka_relay.handoff.server import HandoffServer, HandoffState
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.modes.mode import Mode, mode_for
from kafka_relay.observability.log import JsonLogger
from kafka_relay.prepare import ClientErrors, Prepared, prepare
from kafka_relay.producer.classify import describe
from kafka_relay.producer.credentials import on_thaw
from kafka_relay.spill.sinks import SpillChain


class Parts:
    """The assembled extension: what ``__main__`` runs and tests inspect."""

    __slots__ = ("config", "engine", "logger", "mode", "rings", "server")

    def __init__(self, *, config: Config, engine: DeliveryEngine, server: HandoffServer,
                 mode: Mode, logger: JsonLogger, rings: RingListener | None = None) -> None:
        self.config = config
        self.engine = engine
        self.server = server
        self.rings = rings  # the ring transport's listener (None: off)
        self.mode = mode
        self.logger = logger


def assemble(config: Config, logger: JsonLogger, events: Collection[str], *,
             api: ExtensionsApi | None = None, prepared: Prepared | None = None) -> Parts:
    """Everything but the event loop, for the mode ``events`` (what Lambda accepted the
    registration for) and ``config`` decide, on what ``prepare`` made: the caller's (released
    by the caller, which reports a failure while the first records keep waiting in the port's
    backlog), else made and released here. Without ``api`` (tests) there is no Telemetry."""
    kind = mode_for(events, config)
    if prepared is not None:
        return _assemble(config, logger, kind, prepared)
    prepared = prepare(config, logger, build_producer=not kind.defers_producer,
                       mode=kind.name, api=api)
    try:
        return _assemble(config, logger, kind, prepared)
    except BaseException:
        prepared.close()
        raise


def _assemble(config: Config, logger: JsonLogger, kind: type[Mode], prepared: Prepared) -> Parts:
    errors = prepared.errors
    spill = SpillChain.from_config(config, logger)
    engine = DeliveryEngine(config, producer_factory=prepared.producer_factory, spill=spill,
                            logger=logger, defer_producer=kind.defers_producer,
                            on_thaw=on_thaw(prepared.make_producer.credentials, logger),
                            read_ring=None if prepared.ring_listening is None
                            else ring_reader(config, lambda: int(time.time() * 1000)))
    errors.attach(engine.on_client_error)
    mode = kind(config, engine, logger)
    if not kind.defers_producer:  # SnapStart: no producer, no probe before the snapshot
        engine.start()
        try:
            _probe(engine, errors, config, logger)
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
        server = HandoffServer(state, listening=prepared.listening)
    except RelayError:
        engine.stop()
        raise
    server.start()
    rings = None
    if prepared.ring_listening is not None and engine.ring_recovery is not None:
        rings = RingListener(state, engine.ring_recovery.rings, prepared.ring_listening,
                             take_over=engine.ring_recovery.take_over)
        rings.start()
        mode.listener.closers.append(rings.stop)
    mode.listener.publish({"breaker": {"state": "closed"}, "deferring": False,
                           "max_latency_ms": config.max_latency_ms})
    mode.listener.closers.append(server.stop)
    parts = Parts(config=config, engine=engine, server=server, mode=mode, logger=logger,
                  rings=rings)
    prepared.start_telemetry(mode)
    # cpu_ms: this process's CPU since it started (every thread) when it told Lambda it was
    # ready, the cold start's own cost; assembled_cpu_ms: now, when the port answers.
    assembled_cpu_ms = round(time.process_time() * 1000, 1)
    ready_cpu_ms = prepared.ready_cpu_ms
    logger.info("init.ready", version=__version__, port=server.port, flush=str(config.flush),
                cpu_ms=assembled_cpu_ms if ready_cpu_ms is None else round(ready_cpu_ms, 1),
                assembled_cpu_ms=assembled_cpu_ms,
                bootstrap=config.bootstrap_servers, protocol=config.security_protocol,
                broker_state=engine.status()["broker_state"], mode=mode.name.value,
                **mode.init_fields())
    return parts


def _probe(engine: DeliveryEngine, errors: ClientErrors, config: Config,
           logger: JsonLogger) -> None:
    """Open the first broker connection now (warm for the first invoke) and catch bad creds.
    A refused or unresolvable broker ends the probe at once: init does not wait for it."""
    ended_by: list[str] = []

    def unreachable() -> str | None:
        if errors.auth:
            ended_by.append("auth_error")
            return describe(errors.auth[0])
        if errors.transport:
            ended_by.append("transport_error")
            return describe(errors.transport[-1])
        return None

    started = time.monotonic()
    error = engine.probe(config.init_probe_ms / 1000, unreachable=unreachable)
    if error is not None and not errors.auth:
        engine.reachability.init_error = error  # said by invocation.done until it answers
        logger.warning("init.broker_unreachable", error=error, bootstrap=config.bootstrap_servers,
                       probe_ended_by=ended_by[0] if ended_by else "timeout",
                       probe_ms=round((time.monotonic() - started) * 1000))
    if errors.auth:
        raise AuthError(f"Kafka refused the credentials ({describe(errors.auth[0])}) of "
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
