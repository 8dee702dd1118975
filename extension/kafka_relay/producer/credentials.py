"""How the producer authenticates: one strategy object that adds its librdkafka settings.

    StaticSasl       KAFKA_API_KEY / KAFKA_API_SECRET (PLAIN or SCRAM-SHA-256/512)
    SecretsManager   KAFKA_SECRET_ARN: {"api_key","api_secret"} or MSK's {"username","password"}
    OAuthCallback    SASL/OAUTHBEARER with an injected token function (e.g. MSK IAM)
    NoCredentials    PLAINTEXT / SSL clusters

A new auth method is one more class with ``apply(settings) -> settings``;
``from_config`` picks the strategy the configuration asks for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka_relay.config import Config
from kafka_relay.errors import AuthError, ConfigError

# (secret ARN, region) -> the secret's SecretString; injectable so tests need no AWS.
FetchSecret = Callable[[str, "str | None"], str]
# confluent-kafka's oauth_cb: (sasl.oauthbearer.config) -> (token, expiry as epoch seconds).
TokenFunction = Callable[[str | None], tuple[str, float]]

OAUTHBEARER = "OAUTHBEARER"


class Credentials(Protocol):
    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``settings`` plus what this method needs (a new dict; the argument is not changed)."""
        ...


@dataclass(frozen=True)
class NoCredentials:
    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return dict(settings)


@dataclass(frozen=True)
class StaticSasl:
    """A SASL username and password: Confluent Cloud API keys, or SCRAM users."""

    username: str
    password: str = field(repr=False)
    mechanism: str = "PLAIN"

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**settings, "sasl.mechanism": self.mechanism, "sasl.username": self.username,
                "sasl.password": self.password}


def _secrets_manager_value(arn: str, region: str | None) -> str:
    import boto3  # noqa: PLC0415 - only environments that use a secret pay for boto3

    client = boto3.client("secretsmanager", region_name=region)
    return str(client.get_secret_value(SecretId=arn)["SecretString"])


@dataclass(frozen=True)
class SecretsManager:
    """Username and password read from a Secrets Manager secret when applied.

    Two JSON shapes: ``{"api_key": ..., "api_secret": ...}`` and MSK's SCRAM secrets
    (``AmazonMSK_...``) ``{"username": ..., "password": ...}``.
    """

    arn: str
    region: str | None = None
    mechanism: str = "PLAIN"
    fetch: FetchSecret = field(default=_secrets_manager_value, repr=False, compare=False)

    def resolve(self) -> StaticSasl:
        try:
            raw = self.fetch(self.arn, self.region)
        except Exception as exc:
            raise AuthError(
                f"could not read KAFKA_SECRET_ARN={self.arn!r} from Secrets Manager ({exc}); "
                "check the ARN, the region and that the function role allows "
                "secretsmanager:GetSecretValue on it"
            ) from exc
        try:
            secret = json.loads(raw)
            if "api_key" in secret:
                username, password = secret["api_key"], secret["api_secret"]
            else:
                username, password = secret["username"], secret["password"]
        except (ValueError, KeyError, TypeError) as exc:
            # Never echo the secret's value: only its shape is wrong.
            raise ConfigError(
                f"the secret KAFKA_SECRET_ARN={self.arn!r} must be JSON "
                '{"api_key": "...", "api_secret": "..."} or (MSK SCRAM) '
                '{"username": "...", "password": "..."}'
            ) from exc
        return StaticSasl(str(username), str(password), self.mechanism)

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return self.resolve().apply(settings)


@dataclass(frozen=True)
class OAuthCallback:
    """SASL/OAUTHBEARER: librdkafka asks ``token`` for a fresh token before the old expires."""

    token: TokenFunction = field(repr=False)

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**settings, "sasl.mechanism": OAUTHBEARER, "oauth_cb": self.token}


def from_config(
    config: Config,
    *,
    fetch_secret: FetchSecret | None = None,
    oauth_token: TokenFunction | None = None,
) -> Credentials:
    """The strategy ``config`` asks for: API key/secret, else the secret ARN, else none.

    ``oauth_token`` is the token function of an OAUTHBEARER provider (e.g. MSK IAM).
    """
    if not config.security_protocol.startswith("SASL"):
        return NoCredentials()
    mechanism = config.sasl_mechanism or "PLAIN"
    if mechanism == OAUTHBEARER:
        if oauth_token is None:
            raise ConfigError(
                "KAFKA_SASL_MECHANISM=OAUTHBEARER needs a token provider, and none is "
                "configured for this cluster"
            )
        return OAuthCallback(oauth_token)
    if config.api_key and config.api_secret:
        return StaticSasl(config.api_key, config.api_secret, mechanism)
    if config.secret_arn:
        fetch = fetch_secret or _secrets_manager_value
        return SecretsManager(config.secret_arn, config.region, mechanism, fetch)
    return NoCredentials()
