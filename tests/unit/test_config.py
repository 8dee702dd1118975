"""Configuration is resolved once from the environment; bad values name the variable and the fix."""

from __future__ import annotations

import pytest

from kafka_relay.config import FlushMode, FlushStrategy, load_config
from kafka_relay.errors import ConfigError

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"}


def test_defaults_are_plaintext_end_flush_and_the_documented_limits() -> None:
    config = load_config(BASE)
    assert config.security_protocol == "PLAINTEXT"
    assert config.flush == FlushStrategy(FlushMode.END)
    assert config.port == 4195
    assert config.max_attempts == 3
    assert config.dlq_for("rss.events") == "dlq.rss.events"


def test_endpoint_alias_and_api_key_pair_select_sasl_ssl_plain() -> None:
    config = load_config({"KAFKA_ENDPOINT": "pkc:9092", "KAFKA_API_KEY": "key-1234",
                          "KAFKA_API_SECRET": "secret-5678"})
    assert config.bootstrap_servers == "pkc:9092"
    assert (config.security_protocol, config.sasl_mechanism) == ("SASL_SSL", "PLAIN")
    assert "key-1234" not in repr(config)  # credentials never reach logs through repr
    assert "secret-5678" not in repr(config)


def test_explicit_arguments_win_over_the_environment() -> None:
    config = load_config({**BASE, "KAFKA_RELAY_PORT": "5000"}, port=6000)
    assert config.port == 6000


def test_dlq_topic_alias_and_producer_passthrough() -> None:
    config = load_config({**BASE, "DLQ_TOPIC": "dead", "KAFKA_PRODUCER_LINGER_MS": "20",
                          "KAFKA_PRODUCER_BATCH_NUM_MESSAGES": "500"})
    assert config.dlq_for("anything") == "dead"
    assert config.producer_overrides == {"linger.ms": "20", "batch.num.messages": "500"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("end", FlushStrategy(FlushMode.END)),
     ("shutdown", FlushStrategy(FlushMode.SHUTDOWN)),
     ("periodic:1000", FlushStrategy(FlushMode.PERIODIC, 1000)),
     (" PERIODIC:250 ", FlushStrategy(FlushMode.PERIODIC, 250))],
)
def test_flush_strategies_parse(text: str, expected: FlushStrategy) -> None:
    assert load_config({**BASE, "KAFKA_RELAY_FLUSH": text}).flush == expected


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({**BASE, "KAFKA_RELAY_FLUSH": "sometimes"}, "KAFKA_RELAY_FLUSH"),
        ({**BASE, "KAFKA_RELAY_FLUSH": "periodic:0"}, "KAFKA_RELAY_FLUSH"),
        ({**BASE, "KAFKA_API_KEY": "k"}, "KAFKA_API_SECRET"),
        ({**BASE, "KAFKA_API_SECRET": "s"}, "KAFKA_API_KEY"),
        ({**BASE, "KAFKA_PRODUCER_": "1"}, "KAFKA_PRODUCER_"),
        ({**BASE, "KAFKA_PRODUCER_LINGER_MS": " "}, "KAFKA_PRODUCER_LINGER_MS"),
        ({**BASE, "KAFKA_RELAY_PORT": "http"}, "KAFKA_RELAY_PORT"),
        ({**BASE, "KAFKA_RELAY_PORT": "70000"}, "KAFKA_RELAY_PORT"),
        ({**BASE, "KAFKA_RELAY_MAX_ATTEMPTS": "0"}, "KAFKA_RELAY_MAX_ATTEMPTS"),
        ({**BASE, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SECURITY_PROTOCOL"),
        ({**BASE, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({**BASE, "KAFKA_TOPIC": "no spaces"}, "KAFKA_TOPIC"),
        ({**BASE, "KAFKA_RELAY_TELEMETRY": "maybe"}, "KAFKA_RELAY_TELEMETRY"),
    ],
)
def test_bad_configuration_names_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names) as caught:
        load_config(env)
    assert caught.value.lambda_error_type == "Extension.ConfigError"


def test_scram_mechanism_is_kept() -> None:
    config = load_config({**BASE, "KAFKA_API_KEY": "k", "KAFKA_API_SECRET": "s",
                          "KAFKA_SASL_MECHANISM": "scram-sha-512"})
    assert config.sasl_mechanism == "SCRAM-SHA-512"
