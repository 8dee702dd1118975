"""The client's direct fallback when no extension listens; credentials from Secrets Manager."""

from __future__ import annotations

import json

import boto3
import pytest

from devtools.kafka_broker import free_port
from devtools.moto_server import MotoServer, use_moto
from kafka_relay.client import RelayClient
from kafka_relay.config import load_config
from kafka_relay.errors import AuthError, ConfigError
from kafka_relay.producer.settings import producer_settings, resolve_credentials
from tests.conftest import Broker

pytestmark = pytest.mark.integration


def test_direct_fallback_produces_in_process_when_no_extension_listens(broker: Broker) -> None:
    topic = broker.create_topic()
    env = {"KAFKA_RELAY_FALLBACK": "direct", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
           "KAFKA_TOPIC": topic}
    client = RelayClient(env=env, port=free_port(), token="t")
    result = client.send([{"key": "k1", "value": {"direct": True}}])
    assert result.outcomes == [{"id": result.ids[0], "outcome": "delivered", "error": None}]
    (record,) = broker.read(topic, expected=1)
    assert record.value == b'{"direct":true}'
    assert record.headers["x-relay-id"] == result.ids[0].encode()


def test_credentials_come_from_the_secret_and_reach_the_producer(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_moto(moto, monkeypatch)
    arn = boto3.client("secretsmanager").create_secret(
        Name="kafka", SecretString=json.dumps({"api_key": "key-1", "api_secret": "secret-1"})
    )["ARN"]
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECRET_ARN": arn,
                          "AWS_REGION": moto.region})
    assert config.security_protocol == "SASL_SSL"
    settings = producer_settings(config, resolve_credentials(config))
    assert (settings["sasl.username"], settings["sasl.password"]) == ("key-1", "secret-1")
    assert settings["sasl.mechanism"] == "PLAIN"


def test_a_missing_secret_is_an_auth_error_naming_the_arn(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_moto(moto, monkeypatch)
    arn = f"arn:aws:secretsmanager:{moto.region}:123456789012:secret:absent"
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECRET_ARN": arn})
    with pytest.raises(AuthError, match=r"KAFKA_SECRET_ARN=.*absent.*GetSecretValue"):
        resolve_credentials(config)


def test_a_secret_in_the_wrong_shape_is_a_config_error(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_moto(moto, monkeypatch)
    arn = boto3.client("secretsmanager").create_secret(Name="odd", SecretString="hunter2")["ARN"]
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECRET_ARN": arn})
    with pytest.raises(ConfigError, match='"api_key"'):
        resolve_credentials(config)
