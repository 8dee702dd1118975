"""Configuration is resolved once from the environment; bad values name the variable and the fix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.config import FlushMode, FlushStrategy, load_config
from kafka_relay.errors import ConfigError

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"}


def test_defaults_are_plaintext_auto_flush_and_the_documented_limits() -> None:
    config = load_config(BASE)
    assert config.security_protocol == "PLAINTEXT"
    assert config.flush == FlushStrategy(FlushMode.AUTO)
    assert config.max_latency_ms == 5_000
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
     ("Auto", FlushStrategy(FlushMode.AUTO)),
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


# -- malformed values name the right variable and never echo a secret (issue 13) ----------


@pytest.mark.parametrize(
    ("servers", "fragment"),
    [
        ("not a host!!", "not a host!!"),
        ("broker:99999", "99999"),
        ("broker", "port is required"),
        ("broker:9092,,other:9092", "''"),
        ("::1:9092", "IPv6"),
        ("[not-v6]:9092", "IPv6"),
        ("gopher://broker:9092", "scheme"),
        ("broker:0", "'0'"),
        ("-bad-.example.com:9092", "-bad-"),
    ],
)
def test_malformed_bootstrap_lists_are_rejected_at_init(servers: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS") as caught:
        load_config({"KAFKA_BOOTSTRAP_SERVERS": servers})
    assert fragment in str(caught.value)


def test_the_alias_is_named_when_it_holds_the_bad_list() -> None:
    with pytest.raises(ConfigError, match="KAFKA_ENDPOINT"):
        load_config({"KAFKA_ENDPOINT": "broker:70000"})


@pytest.mark.parametrize(
    "servers",
    ["b-1.kafka.us-east-1.amazonaws.com:9098", "10.0.0.1:9092, 10.0.0.2:9092", "[::1]:9092",
     "SASL_SSL://pkc-x.confluent.cloud:9092", "kafka_1:29092", "localhost.:9092"],
)
def test_plausible_bootstrap_lists_are_accepted(servers: str) -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": servers})
    assert " " not in config.bootstrap_servers


@pytest.mark.parametrize(
    "name", ["KAFKA_PRODUCER_SASL__PASSWORD", "KAFKA_PRODUCER_SSL_KEY_PASSWORD_",
             "KAFKA_PRODUCER_SASL_OAUTHBEARER_CLIENT_SECRET__"],
)
def test_a_malformed_secret_property_is_named_but_its_value_never_shown(name: str) -> None:
    with pytest.raises(ConfigError, match=name) as caught:
        load_config({**BASE, name: "hunter2-very-secret"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "fragment"), [("1e12", "whole number"), ("1000000000000", "out of range"),
                            ("-5", "whole number"), ("9" * 5000, "whole number")],
)
def test_a_garbage_or_overflowing_number_names_its_own_variable(value: str,
                                                                fragment: str) -> None:
    with pytest.raises(ConfigError, match="KAFKA_RELAY_MAX_BUFFER_RECORDS") as caught:
        load_config({**BASE, "KAFKA_RELAY_MAX_BUFFER_RECORDS": value})
    assert fragment in str(caught.value)


_VARIABLES = [
    "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "KAFKA_DLQ_TOPIC", "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM", "KAFKA_RELAY_FLUSH", "KAFKA_RELAY_FLUSH_BUDGET_MS",
    "KAFKA_RELAY_MAX_LATENCY_MS",
    "KAFKA_RELAY_SHUTDOWN_MARGIN_MS", "KAFKA_RELAY_INIT_PROBE_MS", "KAFKA_RELAY_PORT",
    "KAFKA_RELAY_MAX_BUFFER_RECORDS", "KAFKA_RELAY_MAX_BUFFER_BYTES",
    "KAFKA_RELAY_MAX_BODY_BYTES", "KAFKA_RELAY_MAX_ATTEMPTS", "KAFKA_RELAY_RETRY_BACKOFF_MS",
    "KAFKA_RELAY_TELEMETRY", "KAFKA_RELAY_LOG_LEVEL", "KAFKA_PRODUCER_SASL_PASSWORD",
    "KAFKA_PRODUCER_SASL__PASSWORD", "KAFKA_PRODUCER_LINGER_MS",
]
_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(str),
    st.sampled_from(["1e12", "0", "65536", "periodic:0", "periodic:1", "end", "auto", "99",
                     "not a host!!",
                     "h:99999", "[::1]:1", "SASL_SSL", "true", " ", "١٢٣"]),
)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(_VARIABLES), value=_values)
def test_any_single_bad_value_is_a_config_error_naming_its_variable(name: str,
                                                                    value: str) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", name: value}
    try:
        load_config(env)
    except ConfigError as exc:
        message = str(exc)
        assert name in message or (name == "KAFKA_BOOTSTRAP_SERVERS" and not value.strip())
        if "PASSWORD" in name and len(value.strip()) > 3:
            assert value.strip() not in message
