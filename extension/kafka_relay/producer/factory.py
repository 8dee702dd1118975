"""The one place a confluent-kafka ``Producer`` is built: the extension, the replay CLI and
the direct fallback all call ``ProducerFactory``.

Settings, in order of precedence: the user's ``KAFKA_PRODUCER_*`` overrides, the caller's
``extra`` (e.g. replay's client.id), the credentials strategy, the connection settings of
``Config``, and the safe ``DEFAULTS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from kafka_relay.config import PRODUCER_PREFIX, Config
from kafka_relay.errors import AuthError, ConfigError
from kafka_relay.observability.log import LibrdkafkaLog
from kafka_relay.producer.credentials import Credentials, MskIam, from_config

# Seed defaults kept: acks=all + idempotence (no duplicates from librdkafka's own
# retries), zstd, a small linger so one invocation's records share batches.
DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "zstd",
    "linger.ms": 5,
    "socket.keepalive.enable": True,
    "reconnect.backoff.max.ms": 1000,
    # A broker closes connections idle while Lambda froze the environment, so at a thaw all of
    # them are gone at once. librdkafka's default then re-bootstraps: it forgets the brokers
    # it knew and finds the leader again on its 1 s metadata timer (1-2 s before the first
    # delivery, past the flush's stall limit). Without it, the known broker is reconnected
    # after one reconnect backoff; broker names are stable (MSK's are), and their addresses
    # are resolved again at each connection.
    "metadata.recovery.strategy": "none",
}


def linger_s(config: Config) -> float:
    """How long librdkafka lets a batch form (``linger.ms``, or its alias
    ``queue.buffering.max.ms``, as the user set it, else the default), in seconds."""
    overrides = config.producer_overrides
    value = overrides.get("linger.ms", overrides.get("queue.buffering.max.ms",
                                                     DEFAULTS["linger.ms"]))
    try:
        return float(value) / 1000
    except ValueError:  # librdkafka refuses it when the producer is built, naming the variable
        return float(DEFAULTS["linger.ms"]) / 1000


_CREDENTIAL_ERRORS = (KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION)


def producer_settings(
    config: Config, credentials: Credentials, *, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The librdkafka configuration for ``config`` (without callbacks)."""
    settings: dict[str, Any] = {
        **DEFAULTS,
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": f"kafka-relay-{config.function_name or 'local'}",
        "security.protocol": config.security_protocol,
        "queue.buffering.max.messages": max(100_000, config.max_buffer_records * 2),
    }
    settings = credentials.apply(settings)
    settings.update(extra or {})
    settings.update(config.producer_overrides)
    return settings


def rejected_configuration(config: Config, exc: KafkaException) -> ConfigError:
    """The one "the Kafka producer rejected its configuration" error, naming the variables."""
    names = ", ".join(f"{PRODUCER_PREFIX}{p.upper().replace('.', '_')}"
                      for p in config.producer_overrides) or "none set"
    return ConfigError(
        f"the Kafka producer rejected its configuration ({exc.args[0]}); check "
        f"KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM and the "
        f"{PRODUCER_PREFIX}* variables ({names}) against librdkafka's producer properties"
    )


class ProducerFactory:
    """Builds producers with one configuration. Credentials are resolved once, here (a
    Secrets Manager read happens at construction, not at every producer rebuild)."""

    def __init__(
        self,
        config: Config,
        *,
        credentials: Credentials | None = None,
        extra: Mapping[str, Any] | None = None,
        error_cb: Callable[[KafkaError], None] | None = None,
        logger: LibrdkafkaLog | None = None,
    ) -> None:
        self.config = config
        # Kept: MSK IAM's strategy holds the token provider a thaw checks (app.py).
        self.credentials = credentials if credentials is not None else from_config(config)
        self.settings = producer_settings(config, self.credentials, extra=extra)
        self._callbacks: dict[str, Any] = {}
        if error_cb is not None:
            self._callbacks["error_cb"] = error_cb
        if logger is not None:
            self._callbacks["logger"] = logger

    def __call__(self) -> Producer:
        """A new producer; a configuration librdkafka refuses is a ``ConfigError``."""
        if isinstance(self.credentials, MskIam):
            # Sign the first token here: a failure says why (librdkafka would wait 10 s for
            # a token, then say only that none was set).
            self.credentials.provider.token()
        try:
            return Producer({**self.settings, **self._callbacks})
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() in _CREDENTIAL_ERRORS:
                # An OAUTHBEARER token function is called (and waited for) right here.
                raise AuthError(
                    f"the Kafka producer could not get its credentials ({error.str()}): check "
                    f"the token provider of KAFKA_AUTH={self.config.auth} (KAFKA_SASL_MECHANISM="
                    f"{self.config.sasl_mechanism}) and the function role's credentials"
                ) from exc
            raise rejected_configuration(self.config, exc) from exc
