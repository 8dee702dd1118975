"""MSK's SASL_SSL/SCRAM setup end to end: the built layer in the sandbox reads the
credentials from a Secrets Manager secret in MSK's format (``AmazonMSK_*``,
``{"username","password"}``) on moto and delivers through a SCRAM-SHA-512 TLS front."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from devtools.kafka_broker import free_port, read_topic
from devtools.moto_server import MotoServer, use_moto
from devtools.sandbox import Sandbox
from devtools.sasl_mechanisms import SCRAM_SHA_512
from devtools.saslproxy import SaslBroker, sasl_broker
from kafka_relay.tools.table import events_named
from tests.conftest import Artifacts
from tests.e2e.refusal import refusal

FUNCTION = Path(__file__).resolve().parent.parent / "fixtures" / "any_function"
USERS = {"msk-producer": "pw-from-secrets-manager"}


def _secret(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, password: str) -> str:
    use_moto(moto, monkeypatch)
    return str(boto3.client("secretsmanager").create_secret(
        Name="AmazonMSK_kafka-relay",
        SecretString=json.dumps({"username": "msk-producer", "password": password}),
    )["ARN"])


def _sandbox(artifacts: Artifacts, scram: SaslBroker, moto: MotoServer, arn: str,
             topic: str, **env: str) -> Sandbox:
    return Sandbox(
        layers=[artifacts.layer], function=FUNCTION, handler="any_producer.handler",
        env={"KAFKA_BOOTSTRAP_SERVERS": scram.bootstrap, "KAFKA_TOPIC": topic,
             "KAFKA_RELAY_PORT": str(free_port()), "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
             "KAFKA_SASL_MECHANISM": SCRAM_SHA_512, "KAFKA_SECRET_ARN": arn,
             "KAFKA_PRODUCER_SSL_CA_LOCATION": str(scram.proxy.ca_path),
             "AWS_ENDPOINT_URL": moto.endpoint_url, **env},
        function_name="msk-scram", region=moto.region, timeout_s=15.0,
    )


def test_scram_credentials_from_an_msk_secret_deliver_through_tls(
    artifacts: Artifacts, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = _secret(moto, monkeypatch, USERS["msk-producer"])
    with sasl_broker(mechanisms=(SCRAM_SHA_512,), users=USERS) as scram:
        topic = scram.create_topic("msk.scram")
        with _sandbox(artifacts, scram, moto, arn, topic) as sandbox:
            result = sandbox.invoke({"run": "scram", "count": 7, "wait": True})
            shutdown = sandbox.shutdown("spindown")
            lines = sandbox.log_lines()
        config = scram.proxy.client_config()
        records = read_topic(scram.bootstrap, topic, expected=7, client_config=config)
        failed = scram.proxy.stats.auth_failed

    assert result.status == "success", result.error
    assert isinstance(result.payload, dict)
    assert [o["outcome"] for o in result.payload["outcomes"]] == ["delivered"] * 7
    assert shutdown.exit_codes == {"kafka-relay": 0}
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["delivered"], summary["unaccounted"]) == (7, 0)
    assert sorted(r.key or b"" for r in records) == sorted(f"scram-{i}".encode() for i in range(7))
    assert failed == 0


@pytest.mark.parametrize("initialization", ["on-demand", "provisioned-concurrency"])
def test_a_wrong_password_in_the_msk_secret_fails_with_an_auth_error(
    artifacts: Artifacts, moto: MotoServer, monkeypatch: pytest.MonkeyPatch, initialization: str
) -> None:
    """Provisioned concurrency probes the broker before /next: init fails. On demand the probe
    runs after /next: the same error ends the first invocation and its environment."""
    arn = _secret(moto, monkeypatch, "stale-password")
    with sasl_broker(mechanisms=(SCRAM_SHA_512,), users=USERS) as scram:
        topic = scram.create_topic("msk.scram")
        sandbox = _sandbox(artifacts, scram, moto, arn, topic,
                           AWS_LAMBDA_INITIALIZATION_TYPE=initialization)
        with sandbox:
            phase, error_type, message = refusal(sandbox)

    assert phase in (("init", "invoke") if initialization == "on-demand" else ("init",))
    assert error_type == "Extension.AuthError"
    assert "Invalid username or password" in message
    assert "KAFKA_SECRET_ARN" in message
    assert "KAFKA_SASL_MECHANISM=SCRAM-SHA-512" in message
    assert "the SCRAM listener (port 9096 inside AWS, 9196 over public access)" in message
