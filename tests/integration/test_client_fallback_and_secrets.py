"""The client's direct fallback when no extension listens, the one producer factory, and the
credential strategies (Secrets Manager against moto in server mode)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest

from devtools.kafka_broker import free_port
from devtools.moto_server import MotoServer, use_moto
from kafka_relay.client import RelayClient
from kafka_relay.config import load_config
from kafka_relay.errors import AuthError, ConfigError
from kafka_relay.producer.credentials import (
    NoCredentials,
    OAuthCallback,
    SecretsManager,
    StaticSasl,
    from_config,
)
from kafka_relay.producer.factory import ProducerFactory, producer_settings
from kafka_relay.tools.replayer import main as replay_main
from tests.conftest import Broker
from tests.fake_relay import Reply, Seen, accept, fake_relay
from tests.relay_harness import running_relay
from tests.threads import in_threads


def _fallback_env(bootstrap: str, topic: str) -> dict[str, str]:
    return {"KAFKA_RELAY_FALLBACK": "direct", "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC": topic}


def test_direct_fallback_produces_in_process_when_no_extension_listens(broker: Broker) -> None:
    topic = broker.create_topic()
    client = RelayClient(env=_fallback_env(broker.bootstrap, topic), port=free_port(), token="t")
    result = client.send([{"key": "k1", "value": {"direct": True}}])
    assert result.outcomes == [{"id": result.ids[0], "outcome": "delivered", "error": None}]
    assert (result.accepted, result.failed) == (1, 0)
    (record,) = broker.read(topic, expected=1)
    assert record.value == b'{"direct":true}'
    assert record.headers["x-relay-id"] == result.ids[0].encode()


def test_direct_fallback_with_kafka_unreachable_reports_failed_never_accepted() -> None:
    env = _fallback_env(f"127.0.0.1:{free_port()}", "t")
    client = RelayClient(env=env, port=free_port(), timeout_s=2.0)
    result = client.send([{"key": f"k{i}", "value": i} for i in range(10)])
    assert (result.accepted, result.failed) == (0, 10)
    assert [o["outcome"] for o in result.outcomes or []] == ["failed"] * 10
    assert result.accepted_mask() == [False] * 10
    assert all(o["error"] for o in result.outcomes or [])


def test_only_batches_the_extension_did_not_take_are_produced_directly(broker: Broker) -> None:
    """The extension takes batch 1 (1,000 records) and disappears; batch 2 goes direct."""
    topic = broker.create_topic()

    def script(seen: Seen, index: int) -> Reply:
        relay.stop()  # gone once this answer is out: the next connection is refused
        return Reply(202, accept(seen, "ext").body, close=True)

    records = [{"key": f"k{i}", "value": i} for i in range(1500)]
    with fake_relay(script) as relay:
        result = RelayClient(env=_fallback_env(broker.bootstrap, topic),
                             port=relay.port).send(records)
        assert len(relay.records_requests()) == 1
    assert result.ids[:1000] == [f"ext-{n}" for n in range(1000)]
    assert (result.accepted, result.failed) == (1500, 0)
    outcomes = result.outcomes or []
    assert {o["outcome"] for o in outcomes[:1000]} == {"pending"}  # the extension owns them
    assert {o["outcome"] for o in outcomes[1000:]} == {"delivered"}
    got = broker.read(topic, expected=500)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(result.ids[1000:])
    assert sorted(int(r.value or b"") for r in got) == list(range(1000, 1500))


def test_threads_sharing_one_client_through_the_real_extension(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    threads, sends = 6, 25
    ids: list[str] = []
    with running_relay(broker.bootstrap, tmp_path) as relay:
        def work(n: int) -> None:
            for m in range(sends):
                ids.extend(relay.client.send([{"topic": topic, "value": f"{n}-{m}"}]).ids)

        errors = in_threads(work, threads, timeout_s=120)
        relay.client.flush()
        got = broker.read(topic, expected=threads * sends)
    assert errors == []
    assert len(set(ids)) == threads * sends
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(ids)


# -- one producer factory ---------------------------------------------------------------


def test_extension_replay_and_fallback_reject_a_bad_property_with_one_message(
    tmp_path: Path,
) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "KAFKA_TOPIC": "t",
           "KAFKA_PRODUCER_NO_SUCH_PROPERTY": "1", "KAFKA_RELAY_FALLBACK": "direct"}
    expected = (r"^the Kafka producer rejected its configuration \(.*no\.such\.property.*\); "
                r"check .*KAFKA_PRODUCER_NO_SUCH_PROPERTY")
    with pytest.raises(ConfigError, match=expected), running_relay(
            env["KAFKA_BOOTSTRAP_SERVERS"], tmp_path, env_extra=env):
        pass
    with pytest.raises(ConfigError, match=expected):
        RelayClient(env=env, port=free_port()).send([{"value": 1}])
    err = io.StringIO()
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    assert replay_main([str(spool)], env=env, stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith("error: the Kafka producer rejected its configuration (")
    assert "KAFKA_PRODUCER_NO_SUCH_PROPERTY" in err.getvalue()


def test_settings_layer_defaults_credentials_extra_and_user_overrides() -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_API_KEY": "k",
                          "KAFKA_API_SECRET": "s", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                          "KAFKA_PRODUCER_CLIENT_ID": "mine", "KAFKA_PRODUCER_LINGER_MS": "20"})
    settings = producer_settings(config, from_config(config),
                                 extra={"client.id": "replay", "message.timeout.ms": 5})
    assert settings["acks"] == "all"
    assert settings["enable.idempotence"] is True
    assert (settings["security.protocol"], settings["sasl.mechanism"]) == ("SASL_SSL",
                                                                           "SCRAM-SHA-512")
    assert (settings["sasl.username"], settings["sasl.password"]) == ("k", "s")
    assert (settings["client.id"], settings["linger.ms"]) == ("mine", "20")
    assert settings["message.timeout.ms"] == 5


# -- credentials ------------------------------------------------------------------------


def test_static_sasl_for_plain_and_scram_and_none_for_plaintext() -> None:
    assert StaticSasl("u", "p").apply({"a": 1}) == {
        "a": 1, "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "p"}
    assert StaticSasl("u", "p", "SCRAM-SHA-256").apply({})["sasl.mechanism"] == "SCRAM-SHA-256"
    assert "p" not in repr(StaticSasl("u", "p"))
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    assert from_config(config) == NoCredentials()


@pytest.mark.parametrize(
    ("secret", "mechanism"),
    [({"api_key": "key-1", "api_secret": "secret-1"}, "PLAIN"),
     ({"username": "key-1", "password": "secret-1"}, "SCRAM-SHA-512")],  # MSK's SCRAM format
)
def test_credentials_come_from_the_secret_in_either_format_and_reach_the_producer(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, secret: dict[str, str], mechanism: str
) -> None:
    use_moto(moto, monkeypatch)
    arn = boto3.client("secretsmanager").create_secret(
        Name="AmazonMSK_kafka", SecretString=json.dumps(secret))["ARN"]
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECRET_ARN": arn,
                          "KAFKA_SASL_MECHANISM": mechanism, "AWS_REGION": moto.region})
    strategy = from_config(config)
    assert isinstance(strategy, SecretsManager)
    settings = ProducerFactory(config).settings
    assert (settings["sasl.username"], settings["sasl.password"]) == ("key-1", "secret-1")
    assert settings["sasl.mechanism"] == mechanism


def test_a_missing_secret_is_an_auth_error_naming_the_arn(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_moto(moto, monkeypatch)
    arn = f"arn:aws:secretsmanager:{moto.region}:123456789012:secret:absent"
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECRET_ARN": arn})
    with pytest.raises(AuthError, match=r"KAFKA_SECRET_ARN=.*absent.*GetSecretValue.*kms:Decrypt"):
        ProducerFactory(config)


def test_a_secret_in_the_wrong_shape_is_a_config_error_that_does_not_echo_it(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_moto(moto, monkeypatch)
    arn = boto3.client("secretsmanager").create_secret(
        Name="odd", SecretString='{"user": "hunter2"}')["ARN"]
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECRET_ARN": arn})
    with pytest.raises(ConfigError, match=r'"api_key".*"username"') as caught:
        ProducerFactory(config)
    assert "hunter2" not in str(caught.value)


def test_an_oauthbearer_strategy_hands_its_token_function_to_librdkafka() -> None:
    calls: list[str | None] = []

    def token(oauth_config: str | None) -> tuple[str, float]:
        calls.append(oauth_config)
        return "fake-token", 4102444800.0

    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
                         security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER")
    strategy = from_config(config, oauth_token=token)
    assert strategy == OAuthCallback(token)
    with pytest.raises(ConfigError, match="OAUTHBEARER needs a token provider"):
        from_config(config)
    producer = ProducerFactory(config, credentials=strategy)()
    for _ in range(50):  # librdkafka asks for the first token when the client is served
        if calls:
            break
        producer.poll(0.1)
    assert calls, "librdkafka never called the token function"


def test_a_token_function_that_fails_is_an_auth_error_not_a_bad_configuration() -> None:
    def token(_oauth_config: str | None) -> tuple[str, float]:
        raise RuntimeError("no credentials for the token")

    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
                         security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER")
    # librdkafka calls the token function while building the producer, and waits for it
    with pytest.raises(AuthError, match=r"could not get its credentials.*token provider"):
        ProducerFactory(config, credentials=OAuthCallback(token))()
