"""MSK IAM with the role's credentials from botocore's chain (the container endpoint Lambda
uses under SnapStart): each token is signed with current credentials and never outlives them."""

from __future__ import annotations

import pytest

from devtools.container_credentials import ContainerCredentials
from devtools.msk_iam_verifier import KnownKey, MskIamVerifier
from kafka_relay.config import load_config
from kafka_relay.errors import AuthError
from kafka_relay.producer.credentials import MskIam, from_config
from kafka_relay.producer.msk_iam import BotocoreCredentials

REGION = "eu-west-1"


@pytest.fixture
def no_local_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """botocore's chain must find nothing before the container endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("no_local_credentials")
def test_container_credentials_sign_tokens_the_verifier_accepts_capped_at_their_expiry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    keys: dict[str, KnownKey] = {}
    verifier = MskIamVerifier(REGION, keys)
    with ContainerCredentials(keys, lifetime_s=120) as endpoint:
        for name, value in endpoint.environment().items():
            monkeypatch.setenv(name, value)
        config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b-1:9098", "KAFKA_AUTH": "msk-iam",
                              "AWS_REGION": REGION, **endpoint.environment()})
        assert config.aws_credentials is None
        strategy = from_config(config)
        assert isinstance(strategy, MskIam)
        token, expiry = strategy.provider.token()
        renewed = strategy.provider.refresh()  # within botocore's refresh window: new keys

    assert verifier(token) is None
    assert verifier(renewed[0]) is None
    first, second = verifier.accepted
    assert first != second  # botocore fetched new credentials for the refresh
    assert {first, second} <= set(endpoint.issued)
    # 120 s credentials cap the 900 s token (Expiration has whole seconds)
    assert endpoint.issued[first] + 119 <= expiry <= endpoint.issued[first] + 120
    assert endpoint.refused == 0


@pytest.mark.usefixtures("no_local_credentials")
def test_an_endpoint_that_refuses_is_an_auth_error_naming_the_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with ContainerCredentials({}, lifetime_s=120) as endpoint:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "not-the-token")
        with pytest.raises(AuthError, match="AWS_CONTAINER_CREDENTIALS_FULL_URI"):
            BotocoreCredentials()()

    assert endpoint.refused >= 1
