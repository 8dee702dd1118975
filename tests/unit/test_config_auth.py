"""KAFKA_AUTH: msk-iam, scram, plain, none (or unset: derived as before); each refuses the
variables that do not go with it, naming them and the fix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.config import AwsCredentials, load_config
from kafka_relay.errors import ConfigError
from kafka_relay.producer.credentials import (
    MskIam,
    NoCredentials,
    SecretsManager,
    StaticSasl,
    from_config,
)
from kafka_relay.producer.factory import producer_settings

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "b-1.msk.eu-west-1.amazonaws.com:9098"}
ROLE = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "ASIAROLE",
        "AWS_SECRET_ACCESS_KEY": "role-secret", "AWS_SESSION_TOKEN": "role-session"}
ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:AmazonMSK_relay-AbCdEf"


def test_msk_iam_is_sasl_ssl_oauthbearer_signed_with_the_roles_environment_keys() -> None:
    config = load_config({**BASE, **ROLE, "KAFKA_AUTH": "MSK-IAM"})

    assert (config.auth, config.security_protocol, config.sasl_mechanism) == (
        "msk-iam", "SASL_SSL", "OAUTHBEARER")
    assert config.region == "eu-west-1"
    assert config.aws_credentials == AwsCredentials("ASIAROLE", "role-secret", "role-session")
    assert "role-secret" not in repr(config)
    assert "role-session" not in repr(config.aws_credentials)


def test_msk_iam_strategy_sets_the_token_callback_and_no_username() -> None:
    config = load_config({**BASE, **ROLE, "KAFKA_AUTH": "msk-iam"})
    strategy = from_config(config)

    assert isinstance(strategy, MskIam)
    settings_ = strategy.apply({"security.protocol": "PLAINTEXT"})
    assert settings_["security.protocol"] == "SASL_SSL"
    assert settings_["sasl.mechanism"] == "OAUTHBEARER"
    assert settings_["oauth_cb"] is strategy.provider
    assert not {"sasl.username", "sasl.password"} & set(settings_)
    assert strategy.provider.region == "eu-west-1"


def test_only_msk_iam_re_bootstraps_so_a_thaw_reaches_the_broker_after_the_token_refresh(
) -> None:
    msk = load_config({**BASE, **ROLE, "KAFKA_AUTH": "msk-iam"})
    iam = producer_settings(msk, from_config(msk))
    plain = load_config(BASE)
    assert iam["metadata.recovery.strategy"] == "rebootstrap"
    assert producer_settings(plain, from_config(plain))["metadata.recovery.strategy"] == "none"


def test_the_credentials_expiry_is_read_from_aws_credential_expiration() -> None:
    config = load_config({**BASE, **ROLE, "KAFKA_AUTH": "msk-iam",
                          "AWS_CREDENTIAL_EXPIRATION": "2026-01-31T12:00:00Z"})
    assert config.aws_credentials is not None
    assert config.aws_credentials.expiration == 1_769_860_800.0

    with pytest.raises(ConfigError, match="AWS_CREDENTIAL_EXPIRATION='tomorrow' is not an ISO"):
        load_config({**BASE, **ROLE, "KAFKA_AUTH": "msk-iam",
                     "AWS_CREDENTIAL_EXPIRATION": "tomorrow"})


def test_without_keys_in_the_environment_the_container_endpoint_serves_them() -> None:
    env = {**BASE, "KAFKA_AUTH": "msk-iam", "AWS_REGION": "eu-west-1",
           "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds"}
    assert load_config(env).aws_credentials is None  # botocore's chain (SnapStart)

    del env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    with pytest.raises(ConfigError, match=r"neither AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                                          r"nor AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        load_config(env)


@pytest.mark.parametrize("extra", [
    {"KAFKA_API_KEY": "key-1234", "KAFKA_API_SECRET": "secret-5678"},
    {"KAFKA_SECRET_ARN": ARN},
    {"KAFKA_API_SECRET": "secret-5678"},
])
def test_msk_iam_refuses_keys_and_secrets_naming_them_and_the_fix(
        extra: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({**BASE, **ROLE, "KAFKA_AUTH": "msk-iam", **extra})

    message = str(caught.value)
    assert all(name in message for name in extra)
    assert "unset them" in message
    assert "KAFKA_AUTH=scram" in message
    # Both of MSK's listeners for each method: inside AWS and over public access.
    assert "MSK IAM (port 9098 inside AWS, 9198 over public access)" in message
    assert "MSK SCRAM (port 9096 inside AWS, 9196 over public access)" in message
    assert not any(value in message for value in extra.values())


@pytest.mark.parametrize(("env", "names"), [
    ({"KAFKA_AUTH": "msk-iam", "AWS_REGION": ""}, "AWS_REGION"),
    ({"KAFKA_AUTH": "msk-iam", "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
     "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not go with KAFKA_AUTH=msk-iam"),
    ({"KAFKA_AUTH": "msk-iam", "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM=PLAIN"),
    ({"KAFKA_AUTH": "msk-iam", "AWS_ACCESS_KEY_ID": ""}, "AWS_ACCESS_KEY_ID is not set"),
    ({"KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "set KAFKA_AUTH=msk-iam"),
    ({"KAFKA_AUTH": "iam"}, "KAFKA_AUTH='iam' is not supported"),
    ({"KAFKA_AUTH": "scram"}, "KAFKA_AUTH=scram needs credentials"),
    ({"KAFKA_AUTH": "scram", "KAFKA_SECRET_ARN": ARN, "KAFKA_SASL_MECHANISM": "PLAIN"},
     "KAFKA_SASL_MECHANISM=PLAIN does not go with KAFKA_AUTH=scram"),
    ({"KAFKA_AUTH": "plain", "KAFKA_SECRET_ARN": ARN, "KAFKA_SECURITY_PROTOCOL": "SSL"},
     "KAFKA_SECURITY_PROTOCOL=SSL does not go with KAFKA_AUTH=plain"),
    ({"KAFKA_AUTH": "none", "KAFKA_SECRET_ARN": ARN}, "KAFKA_AUTH=none sends no credentials"),
    ({"KAFKA_AUTH": "none", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
     "KAFKA_SECURITY_PROTOCOL=SASL_SSL does not go with KAFKA_AUTH=none"),
])
def test_auth_rules_name_the_variables(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config({**BASE, **ROLE, **env})


def test_scram_reads_an_msk_secret_with_sha_512_unless_told_otherwise() -> None:
    config = load_config({**BASE, "KAFKA_AUTH": "scram", "KAFKA_SECRET_ARN": ARN,
                          "AWS_REGION": "eu-west-1"})
    assert (config.auth, config.security_protocol, config.sasl_mechanism) == (
        "scram", "SASL_SSL", "SCRAM-SHA-512")
    strategy = from_config(config)
    assert isinstance(strategy, SecretsManager)
    assert (strategy.arn, strategy.region, strategy.mechanism) == (
        ARN, "eu-west-1", "SCRAM-SHA-512")
    sha256 = load_config({**BASE, "KAFKA_AUTH": "scram", "KAFKA_SECRET_ARN": ARN,
                          "KAFKA_SASL_MECHANISM": "scram-sha-256"})
    assert sha256.sasl_mechanism == "SCRAM-SHA-256"


def test_without_kafka_auth_the_mode_follows_from_the_other_variables() -> None:
    keys = load_config({**BASE, "KAFKA_API_KEY": "k", "KAFKA_API_SECRET": "s"})
    scram = load_config({**BASE, "KAFKA_SECRET_ARN": ARN, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    plaintext = load_config(BASE)

    assert (keys.auth, keys.security_protocol, keys.sasl_mechanism) == (
        "plain", "SASL_SSL", "PLAIN")
    assert from_config(keys) == StaticSasl("k", "s", "PLAIN")
    assert (scram.auth, scram.security_protocol) == ("scram", "SASL_SSL")
    assert (plaintext.auth, plaintext.security_protocol, plaintext.sasl_mechanism) == (
        "none", "PLAINTEXT", None)
    assert from_config(plaintext) == NoCredentials()
    assert load_config({**BASE, "KAFKA_AUTH": "plain", "KAFKA_API_KEY": "k",
                        "KAFKA_API_SECRET": "s"}) == keys


_AUTH_VARS = {
    "KAFKA_AUTH": st.sampled_from(["", "msk-iam", "scram", "plain", "none", "MSK-IAM", "x"]),
    "KAFKA_API_KEY": st.sampled_from(["", "key"]),
    "KAFKA_API_SECRET": st.sampled_from(["", "secret"]),
    "KAFKA_SECRET_ARN": st.sampled_from(["", ARN]),
    "KAFKA_SECURITY_PROTOCOL": st.sampled_from(["", "PLAINTEXT", "SSL", "SASL_PLAINTEXT",
                                                "SASL_SSL", "TLS"]),
    "KAFKA_SASL_MECHANISM": st.sampled_from(["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512",
                                             "OAUTHBEARER", "GSSAPI"]),
    "AWS_REGION": st.sampled_from(["", "eu-west-1"]),
    "AWS_ACCESS_KEY_ID": st.sampled_from(["", "ASIAROLE"]),
    "AWS_SECRET_ACCESS_KEY": st.sampled_from(["", "role-secret"]),
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": st.sampled_from(["", "http://127.0.0.1:9/c"]),
}


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries(_AUTH_VARS))
def test_any_auth_combination_is_a_consistent_config_or_an_error_naming_a_variable(
        env: dict[str, str]) -> None:
    try:
        config = load_config({**BASE, **env})
    except ConfigError as exc:
        message = str(exc)
        assert any(name in message for name in _AUTH_VARS), message
        assert "role-secret" not in message
        assert "secret'" not in message
        return
    sasl = config.security_protocol.startswith("SASL")
    has_keys = config.api_key is not None or config.secret_arn is not None
    if config.auth == "msk-iam":
        assert (config.security_protocol, config.sasl_mechanism) == ("SASL_SSL", "OAUTHBEARER")
        assert not has_keys
        assert config.region
        assert isinstance(from_config(config), MskIam)
    else:
        assert config.sasl_mechanism != "OAUTHBEARER"
        assert sasl == (config.auth in ("plain", "scram"))
        assert has_keys or not sasl  # (keys with an explicit PLAINTEXT: ignored, as before)
        assert config.auth != "plain" or config.sasl_mechanism == "PLAIN"
        assert config.auth != "scram" or str(config.sasl_mechanism).startswith("SCRAM")
    if env["KAFKA_AUTH"]:
        assert config.auth == env["KAFKA_AUTH"].lower()
