"""MSK IAM: OAUTHBEARER tokens for confluent-kafka's ``oauth_cb``.

A token is ``aws-msk-iam-sasl-signer-python``'s base64url SigV4-presigned URL for
``kafka-cluster:Connect``, signed with the execution role's credentials. Both the
region and the credentials are handed in (config reads the environment, not this
module). A token never outlives the credentials that signed it, and ``refresh()``
mints a new one at once (after a thaw, before producing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kafka_relay.aws_lambda import sdk_importable
from kafka_relay.config import AwsCredentials
from kafka_relay.errors import AuthError, ConfigError

__all__ = ["AwsCredentials", "BotocoreCredentials", "MskIamTokenProvider", "msk_signer"]

#: Mint a new token this long before the current one (or the credentials) expires; never
#: earlier than librdkafka asks (at 80% of a token's lifetime), so stale() implies it asked.
REFRESH_MARGIN_S = 60.0
_LIBRDKAFKA_REFRESH_FRACTION = 0.8


#: (region, credentials) -> (token, expiry in epoch milliseconds), as the MSK signer returns.
Signer = Callable[[str, AwsCredentials], "tuple[str, int]"]
CredentialSource = Callable[[], AwsCredentials]


class BotocoreCredentials:
    """The role's credentials through botocore's chain, refreshed by botocore before they
    expire, with their expiry: under SnapStart (and in containers) Lambda serves them from
    the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI), not the
    environment. botocore comes with the Lambda runtime; it is imported on first use."""

    def __init__(self) -> None:
        self._resolved: Any = None

    def __call__(self) -> AwsCredentials:
        try:
            if self._resolved is None:
                sdk_importable()
                import botocore.session  # noqa: PLC0415 - only msk-iam needs botocore

                self._resolved = botocore.session.get_session().get_credentials()
            if self._resolved is None:
                raise RuntimeError("botocore's credential chain found no credentials")
            frozen = self._resolved.get_frozen_credentials()  # refreshes when near expiry
        except Exception as exc:
            raise AuthError(
                f"KAFKA_AUTH=msk-iam could not get the execution role's credentials ({exc}); "
                "check AWS_CONTAINER_CREDENTIALS_FULL_URI or AWS_ACCESS_KEY_ID"
            ) from exc
        expiry = getattr(self._resolved, "_expiry_time", None)  # RefreshableCredentials
        return AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token,
                              expiry.timestamp() if expiry is not None else None)


def msk_signer(region: str, credentials: AwsCredentials) -> tuple[str, int]:
    """aws-msk-iam-sasl-signer-python with exactly these credentials (no credential chain)."""
    # Imported here: boto3/botocore load only when MSK IAM is configured.
    sdk_importable()
    from aws_msk_iam_sasl_signer import (  # type: ignore[import-untyped]  # noqa: PLC0415
        MSKAuthTokenProvider,
    )
    from botocore.credentials import CredentialProvider, Credentials  # noqa: PLC0415

    class _Given(CredentialProvider):  # type: ignore[misc]
        METHOD = "kafka-relay"

        def load(self) -> Any:
            return Credentials(
                credentials.access_key_id, credentials.secret_access_key,
                credentials.session_token,
            )

    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
        region, _Given()
    )
    return str(token), int(expiry_ms)


class MskIamTokenProvider:
    """``oauth_cb`` for confluent-kafka: cached tokens, re-minted near expiry or on demand.

    Thread-safe: librdkafka calls it from ``poll()``, the lifecycle from its own thread.
    """

    def __init__(
        self,
        *,
        region: str,
        credentials: CredentialSource,
        signer: Signer = msk_signer,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        if not region:
            raise ConfigError(
                "KAFKA_AUTH=msk-iam needs the cluster's region: Lambda sets AWS_REGION"
            )
        self.region = region
        self._credentials = credentials
        self._signer = signer
        self._clock = clock
        self._margin = refresh_margin_s
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None
        self._stale_at = 0.0
        self.minted = 0

    def __call__(self, oauth_config: str) -> tuple[str, float]:
        """confluent-kafka's ``oauth_cb(sasl.oauthbearer.config)`` -> (token, expiry s)."""
        return self.token()

    def token(self) -> tuple[str, float]:
        with self._lock:
            if self._current is None or self.stale():
                self._current = self._mint()
            return self._current

    def refresh(self) -> tuple[str, float]:
        """A new token now, whatever the cached one's age (call after a thaw)."""
        with self._lock:
            self._current = self._mint()
            return self._current

    def stale(self) -> bool:
        """Whether the cached token is missing or within the margin of its expiry."""
        return self._current is None or self._clock() >= self._stale_at

    def await_fresh(
        self, poll: Callable[[float], object], *, timeout_s: float = 3.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> bool:
        """After a thaw, before producing: wait until librdkafka holds a token that is not
        stale. Its refresh timer fires within a second of the wall clock passing 80% of the
        token's lifetime and calls oauth_cb (confluent-kafka serves that on its background
        thread; ``poll``, the producer's, serves it too where it does not). False when no
        fresh token came within ``timeout_s``.
        """
        deadline = monotonic() + timeout_s
        while self.stale() and monotonic() < deadline:
            poll(0.05)
        return not self.stale()

    def _mint(self) -> tuple[str, float]:
        credentials = self._credentials()
        try:
            token, expiry_ms = self._signer(self.region, credentials)
        except Exception as exc:
            raise AuthError(
                f"KAFKA_AUTH=msk-iam could not sign an MSK IAM token in {self.region} "
                f"({exc}); check the execution role's credentials"
            ) from exc
        expiry = expiry_ms / 1000
        if credentials.expiration is not None:
            expiry = min(expiry, credentials.expiration)
        if expiry <= self._clock():
            raise AuthError(
                f"KAFKA_AUTH=msk-iam: the execution role's credentials "
                f"({credentials.access_key_id}) expired at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expiry))}: an MSK IAM token "
                "signed with them would be refused"
            )
        now = self._clock()
        self._stale_at = expiry - min(
            self._margin, (1 - _LIBRDKAFKA_REFRESH_FRACTION) * (expiry - now)
        )
        self.minted += 1
        return token, expiry
