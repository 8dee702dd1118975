"""How the producer authenticates: one strategy object that adds its librdkafka settings.

    StaticSasl       KAFKA_API_KEY / KAFKA_API_SECRET (PLAIN or SCRAM-SHA-256/512)
    SecretsManager   KAFKA_SECRET_ARN: {"api_key","api_secret"} or MSK's {"username","password"}
    MskIam           KAFKA_AUTH=msk-iam: SASL_SSL/OAUTHBEARER, tokens signed with the role
    OAuthCallback    SASL/OAUTHBEARER with an injected token function
    NoCredentials    PLAINTEXT / SSL clusters

A new auth method is one more class with ``apply(settings) -> settings``; when something of
it goes stale while Lambda freezes the environment (MskIam's token), ``on_thaw`` gives the
pump its ``thaw_check``. ``from_config`` picks the strategy the configuration asks for. The
strategies are NamedTuples: a dataclass costs CPU at every cold start.
"""

import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from kafka_relay.aws_lambda import sdk_importable
from kafka_relay.config import MSK_IAM, Config
from kafka_relay.errors import AuthError, ConfigError
from kafka_relay.observability.log import JsonLogger
from kafka_relay.producer.msk_iam import BotocoreCredentials, MskIamTokenProvider

#: How long, after a thaw, the pump waits for librdkafka to take a fresh MSK IAM token
#: before it produces (librdkafka's refresh timer ticks every second).
THAW_TOKEN_WAIT_S = 3.0

# (secret ARN, region) -> the secret's SecretString; injectable so tests need no AWS.
FetchSecret = Callable[[str, "str | None"], str]
# confluent-kafka's oauth_cb: (sasl.oauthbearer.config) -> (token, expiry as epoch seconds).
TokenFunction = Callable[[str | None], tuple[str, float]]

OAUTHBEARER = "OAUTHBEARER"


class _Polls(Protocol):
    def poll(self, timeout: float = ...) -> int: ...


class Credentials(Protocol):
    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``settings`` plus what this method needs (a new dict; the argument is not changed)."""
        ...


def on_thaw(credentials: Credentials, log: JsonLogger) -> Callable[[_Polls], None] | None:
    """What the pump runs with its producer before producing after a freeze (``on_thaw``), or
    None when nothing of ``credentials`` goes stale while frozen."""
    return credentials.thaw_check(log) if isinstance(credentials, MskIam) else None


class NoCredentials:
    __slots__ = ()

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return dict(settings)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoCredentials)

    def __hash__(self) -> int:
        return hash(NoCredentials)

    def __repr__(self) -> str:
        return "NoCredentials()"


class StaticSasl(NamedTuple):
    """A SASL username and password: Confluent Cloud API keys, or SCRAM users."""

    username: str
    password: str
    mechanism: str = "PLAIN"

    def __repr__(self) -> str:  # never the password
        return f"StaticSasl(username={self.username!r}, mechanism={self.mechanism!r})"

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**settings, "sasl.mechanism": self.mechanism, "sasl.username": self.username,
                "sasl.password": self.password}


def _secrets_manager_value(arn: str, region: str | None) -> str:
    sdk_importable()
    import boto3  # noqa: PLC0415 - only environments that use a secret pay for boto3

    client = boto3.client("secretsmanager", region_name=region)
    return str(client.get_secret_value(SecretId=arn)["SecretString"])


class SecretsManager(NamedTuple):
    """Username and password read from a Secrets Manager secret when applied.

    Two JSON shapes: ``{"api_key": ..., "api_secret": ...}`` and MSK's SCRAM secrets
    (``AmazonMSK_...``) ``{"username": ..., "password": ...}``.
    """

    arn: str
    region: str | None = None
    mechanism: str = "PLAIN"
    fetch: FetchSecret = _secrets_manager_value

    def resolve(self) -> StaticSasl:
        try:
            raw = self.fetch(self.arn, self.region)
        except Exception as exc:
            raise AuthError(
                f"could not read KAFKA_SECRET_ARN={self.arn!r} from Secrets Manager ({exc}); "
                "check the ARN, the region and that the function role allows "
                "secretsmanager:GetSecretValue on it, and kms:Decrypt on its key when that is a "
                "customer managed key (MSK SCRAM secrets always are)"
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


class OAuthCallback(NamedTuple):
    """SASL/OAUTHBEARER: librdkafka asks ``token`` for a fresh token before the old expires."""

    token: TokenFunction

    def __repr__(self) -> str:
        return "OAuthCallback()"

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**settings, "sasl.mechanism": OAUTHBEARER, "oauth_cb": self.token}


class MskIam(NamedTuple):
    """MSK IAM: SASL_SSL + OAUTHBEARER with tokens ``provider`` signs with the role's
    credentials. ``provider`` is kept so that a thaw can make sure the token is fresh."""

    provider: MskIamTokenProvider

    def __repr__(self) -> str:
        return "MskIam()"

    @classmethod
    def from_config(cls, config: Config) -> "MskIam":
        given = config.aws_credentials
        source = (lambda: given) if given is not None else BotocoreCredentials()
        return cls(MskIamTokenProvider(region=config.region or "", credentials=source))

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        # A token signed before a freeze may have expired by the thaw. Reconnecting the known
        # broker at once (factory.DEFAULTS) would present it; re-bootstrapping reaches the
        # broker on librdkafka's 1 s metadata timer, after its token refresh (the pump's
        # thaw check serves it), as MSK IAM producers always did.
        return {**settings, "security.protocol": "SASL_SSL", "sasl.mechanism": OAUTHBEARER,
                "oauth_cb": self.provider, "metadata.recovery.strategy": "rebootstrap"}

    def after_thaw(self, poll: Callable[[float], object], *,
                   timeout_s: float = THAW_TOKEN_WAIT_S) -> bool | None:
        """Before producing after a freeze: None when the token is still fresh, else whether
        librdkafka took a new one within ``timeout_s`` (``poll`` serves its refresh)."""
        if not self.provider.stale():
            return None
        return self.provider.await_fresh(poll, timeout_s=timeout_s)

    def thaw_check(self, log: JsonLogger, *, timeout_s: float = THAW_TOKEN_WAIT_S
                   ) -> Callable[[_Polls], None]:
        """The pump's ``on_thaw``: ``after_thaw`` with the pump's producer, logged; never
        raises (the pump must go on; a token refused later is an ordinary auth error)."""

        def check(producer: _Polls) -> None:
            try:
                fresh = self.after_thaw(producer.poll, timeout_s=timeout_s)
            except Exception as exc:
                log.warning("auth.thaw_refresh_failed", error=str(exc))
                return
            if fresh is None:  # (librdkafka's own refresh may have come first)
                log.debug("auth.token_fresh")
            elif fresh:
                log.info("auth.token_refreshed", minted=self.provider.minted)
            else:
                log.warning("auth.token_not_fresh", waited_s=timeout_s,
                            hint="librdkafka did not take a new MSK IAM token after the "
                                 "thaw; producing anyway")

        return check


def from_config(
    config: Config,
    *,
    fetch_secret: FetchSecret | None = None,
    oauth_token: TokenFunction | None = None,
) -> Credentials:
    """The strategy ``config`` asks for: MSK IAM, API key/secret, the secret ARN, or none.

    ``oauth_token`` is the token function of another OAUTHBEARER provider.
    """
    if config.auth == MSK_IAM:
        return MskIam.from_config(config)
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
