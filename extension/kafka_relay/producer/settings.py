"""The librdkafka producer configuration: safe defaults, credentials, user overrides."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka_relay.config import Config
from kafka_relay.errors import AuthError, ConfigError

# Seed defaults kept: acks=all + idempotence (no duplicates from librdkafka's own
# retries), zstd, a small linger so one invocation's records share batches.
DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "zstd",
    "linger.ms": 5,
    "socket.keepalive.enable": True,
    "reconnect.backoff.max.ms": 1000,
}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def resolve_credentials(
    config: Config, *, fetch_secret: Callable[[str, str | None], str] | None = None
) -> Credentials | None:
    """API key/secret from the environment, else from Secrets Manager (KAFKA_SECRET_ARN)."""
    if config.api_key and config.api_secret:
        return Credentials(config.api_key, config.api_secret)
    if not config.secret_arn:
        return None
    fetch = fetch_secret or _secrets_manager_value
    try:
        raw = fetch(config.secret_arn, config.region)
    except Exception as exc:
        raise AuthError(
            f"could not read KAFKA_SECRET_ARN={config.secret_arn!r} from Secrets Manager ({exc}); "
            "check the ARN and that the function role allows secretsmanager:GetSecretValue on it"
        ) from exc
    try:
        secret = json.loads(raw)
        return Credentials(
            str(secret.get("api_key") or secret["username"]),
            str(secret.get("api_secret") or secret["password"]),
        )
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"the secret KAFKA_SECRET_ARN={config.secret_arn!r} must be JSON "
            '{"api_key": "...", "api_secret": "..."} or, as MSK stores SASL/SCRAM secrets, '
            '{"username": "...", "password": "..."}'
        ) from exc


def _secrets_manager_value(arn: str, region: str | None) -> str:
    import boto3  # noqa: PLC0415 - only environments that use a secret pay for boto3

    client = boto3.client("secretsmanager", region_name=region)
    return str(client.get_secret_value(SecretId=arn)["SecretString"])


def producer_settings(config: Config, credentials: Credentials | None) -> dict[str, Any]:
    settings: dict[str, Any] = dict(DEFAULTS)
    settings.update(
        {
            "bootstrap.servers": config.bootstrap_servers,
            "client.id": f"kafka-relay-{config.function_name or 'local'}",
            "security.protocol": config.security_protocol,
            "queue.buffering.max.messages": max(100_000, config.max_buffer_records * 2),
        }
    )
    if config.sasl_mechanism and config.security_protocol.startswith("SASL"):
        settings["sasl.mechanism"] = config.sasl_mechanism
        if credentials is not None:
            settings["sasl.username"] = credentials.username
            settings["sasl.password"] = credentials.password
    settings.update(config.producer_overrides)
    return settings
