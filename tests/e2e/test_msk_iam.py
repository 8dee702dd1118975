"""MSK IAM end to end: the built layer in the sandbox with ``KAFKA_AUTH=msk-iam`` signs
OAUTHBEARER tokens with the role's credentials and delivers through a TLS +
SASL/OAUTHBEARER front that recomputes each token's SigV4 signature (devtools'
``MskIamVerifier``). Bad tokens fail with an AuthError that says what the role
needs; a freeze that outlives the token (and the credentials that signed it) is
followed by a fresh token, not an auth failure."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools.container_credentials import ContainerCredentials
from devtools.kafka_broker import free_port, read_topic
from devtools.msk_iam_verifier import KnownKey, MskIamVerifier
from devtools.sandbox import Sandbox, SandboxInitError
from devtools.sasl_mechanisms import OAUTHBEARER, PLAIN
from devtools.saslproxy import SaslBroker, sasl_broker
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts
from tests.e2e.refusal import refusal

FUNCTION = Path(__file__).resolve().parent.parent / "fixtures" / "any_function"
REGION = "eu-west-1"
ROLE = {"AWS_ACCESS_KEY_ID": "ASIAROLEKEY", "AWS_SECRET_ACCESS_KEY": "role-secret-key",
        "AWS_SESSION_TOKEN": "role-session-token"}
ROLE_KEYS = {"ASIAROLEKEY": KnownKey("role-secret-key", "role-session-token")}
#: The short-lived credentials of the freeze test: they (and the tokens they sign) expire
#: well within the freeze.
LIFETIME_S = 4.0
# botocore's chain must not find credentials on this machine before the container endpoint
NO_LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
                        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                        "AWS_CONFIG_FILE": "/nonexistent/config",
                        "AWS_EC2_METADATA_DISABLED": "true"}


def _sandbox(artifacts: Artifacts, iam: SaslBroker, topic: str, **env: str) -> Sandbox:
    return Sandbox(
        layers=[artifacts.layer], function=FUNCTION, handler="any_producer.handler",
        env={"KAFKA_AUTH": "msk-iam", "KAFKA_BOOTSTRAP_SERVERS": iam.bootstrap,
             "KAFKA_TOPIC": topic, "KAFKA_RELAY_PORT": str(free_port()),
             "KAFKA_PRODUCER_SSL_CA_LOCATION": str(iam.proxy.ca_path), **env},
        function_name="msk-iam", region=REGION, timeout_s=15.0,
    )


def _delivered(result: object, count: int) -> None:
    payload = getattr(result, "payload", None)
    assert getattr(result, "status", None) == "success", getattr(result, "error", None)
    assert isinstance(payload, dict)
    assert [o["outcome"] for o in payload["outcomes"]] == ["delivered"] * count


def test_msk_iam_tokens_signed_with_the_role_deliver_through_tls(
        artifacts: Artifacts) -> None:
    verifier = MskIamVerifier(REGION, ROLE_KEYS)
    with sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam:
        topic = iam.create_topic("msk.iam")  # over PLAIN: the test's own admin client
        with _sandbox(artifacts, iam, topic, **ROLE) as sandbox:
            result = sandbox.invoke({"run": "iam", "count": 6, "wait": True})
            shutdown = sandbox.shutdown("spindown")
            lines = sandbox.log_lines()
        records = read_topic(iam.bootstrap, topic, expected=6,
                             client_config=iam.proxy.client_config(mechanism=PLAIN))

    _delivered(result, 6)
    assert shutdown.exit_codes == {"kafka-relay": 0}
    (ready,) = events_named(lines, "init.ready")
    assert ready["protocol"] == "SASL_SSL"
    assert sorted(r.key or b"" for r in records) == sorted(f"iam-{i}".encode() for i in range(6))
    assert verifier.accepted
    assert set(verifier.accepted) == {"ASIAROLEKEY"}
    assert verifier.rejected == []


@pytest.mark.parametrize("case", ["tampered", "expired"])
def test_a_refused_token_fails_with_what_the_role_needs(
        artifacts: Artifacts, case: str) -> None:
    """The broker refuses the token after /next (on demand): the first invocation fails (init,
    when the refusal came before the runtime finished its own init)."""
    if case == "tampered":  # the front knows another secret for the key: the signature differs
        verifier = MskIamVerifier(REGION, {"ASIAROLEKEY": KnownKey("another-secret",
                                                                   "role-session-token")})
    else:  # the front's clock is past the token's 900 s
        verifier = MskIamVerifier(REGION, ROLE_KEYS, clock=lambda: time.time() + 1000)
    with sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam:
        topic = iam.create_topic("msk.iam")
        with _sandbox(artifacts, iam, topic, **ROLE) as sandbox:
            phase, error_type, message = refusal(sandbox)

    assert phase in ("init", "invoke")
    assert error_type == "Extension.AuthError"
    reason = "signature does not match" if case == "tampered" else "token expired"
    assert reason in message
    assert "KAFKA_AUTH=msk-iam" in message
    for action in ("Connect", "DescribeTopic", "WriteData", "WriteDataIdempotently"):
        assert f"kafka-cluster:{action}" in message
    assert "port 9098 inside AWS, 9198 over public access" in message
    assert verifier.accepted == []


def test_credentials_that_expired_before_init_fail_it_naming_kafka_auth(
        artifacts: Artifacts) -> None:
    verifier = MskIamVerifier(REGION, ROLE_KEYS)
    with sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam:
        topic = iam.create_topic("msk.iam")
        sandbox = _sandbox(artifacts, iam, topic, **ROLE,
                           AWS_CREDENTIAL_EXPIRATION="2020-01-01T00:00:00Z")
        with sandbox, pytest.raises(SandboxInitError) as caught:
            sandbox.start()

    assert caught.value.error_type == "Extension.AuthError"
    assert "KAFKA_AUTH=msk-iam" in caught.value.message
    assert "expired at 2020-01-01T00:00:00Z" in caught.value.message
    assert verifier.accepted == []


def test_after_a_freeze_longer_than_the_tokens_life_the_next_invocation_uses_a_fresh_one(
        artifacts: Artifacts) -> None:
    """The role's credentials come from the container endpoint (as under SnapStart) and live
    LIFETIME_S, so each token does too. The environment stays frozen (SIGSTOP) longer than
    that, and meanwhile the front drops every connection (as MSK ends expired sessions):
    the next invocation must reconnect, and does so with a token signed after the thaw."""
    keys: dict[str, KnownKey] = {}
    verifier = MskIamVerifier(REGION, keys)
    with (ContainerCredentials(keys, lifetime_s=LIFETIME_S) as role,
          sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam):
        topic = iam.create_topic("msk.iam.freeze")
        with _sandbox(artifacts, iam, topic, **NO_LOCAL_CREDENTIALS, **role.environment(),
                      KAFKA_RELAY_LOG_LEVEL="DEBUG") as sandbox:
            before = sandbox.invoke({"run": "before", "count": 5, "wait": True})
            accepted_before = len(verifier.accepted)
            frozen_at = time.time()
            time.sleep(LIFETIME_S + 2)  # frozen: the token and its credentials expire
            assert iam.proxy.drop_connections() > 0
            thawed_at = time.time()
            after = sandbox.invoke({"run": "after", "count": 5, "wait": True})
            shutdown = sandbox.shutdown("spindown")
            lines = sandbox.log_lines()
        records = read_topic(iam.bootstrap, topic, expected=10,
                             client_config=iam.proxy.client_config(mechanism=PLAIN))

    _delivered(before, 5)
    _delivered(after, 5)
    assert shutdown.exit_codes == {"kafka-relay": 0}
    assert len(records) == 10
    assert verifier.rejected == []  # no expired token reached the front, before or after
    after_thaw = verifier.accepted[accepted_before:]
    assert after_thaw, "the post-thaw invocation opened no new authenticated connection"
    assert all(role.issued[key] > frozen_at for key in after_thaw)
    assert all(role.issued[key] >= thawed_at for key in after_thaw)
    # The check ran at each INVOKE: the token was fresh (librdkafka's own refresh thread
    # may take the new one first) or became fresh while the pump waited.
    checks = events_named(lines, "auth.token_fresh") + events_named(lines, "auth.token_refreshed")
    assert len(checks) == 2
    assert not events_named(lines, "auth.token_not_fresh")
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["delivered"], summary["unaccounted"]) == (10, 0)
