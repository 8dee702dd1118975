"""SASL_SSL/PLAIN: right credentials deliver through TLS; wrong ones (or a bad producer setting)
stop init, naming the cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.kafka_broker import read_topic
from devtools.saslproxy import DEFAULT_PASSWORD, DEFAULT_USERNAME, sasl_broker
from kafka_relay.errors import AuthError, ConfigError
from tests.relay_harness import running_relay


def _env(ca_path: Path, password: str) -> dict[str, str]:
    return {"KAFKA_API_KEY": DEFAULT_USERNAME, "KAFKA_API_SECRET": password,
            "KAFKA_PRODUCER_SSL_CA_LOCATION": str(ca_path)}


def test_correct_credentials_deliver_over_sasl_ssl(tmp_path: Path) -> None:
    with sasl_broker() as sasl:
        topic = sasl.create_topic("secure.events")
        with running_relay(sasl.bootstrap, tmp_path, default_topic=topic,
                           env_extra=_env(sasl.proxy.ca_path, DEFAULT_PASSWORD)) as h:
            assert h.config.security_protocol == "SASL_SSL"
            result = h.client.send([{"key": "k", "value": {"secure": True}}], wait=True)
            assert result.count("delivered") == 1
        (record,) = read_topic(sasl.bootstrap, topic, expected=1,
                               client_config=sasl.proxy.client_config())
    assert record.value == b'{"secure":true}'
    assert record.headers["x-relay-id"] == result.ids[0].encode()


def test_wrong_credentials_fail_init_with_an_auth_error_naming_the_cause(tmp_path: Path) -> None:
    with sasl_broker() as sasl, pytest.raises(AuthError) as caught:  # noqa: SIM117
        with running_relay(sasl.bootstrap, tmp_path, init_probe_ms=1500,
                           env_extra=_env(sasl.proxy.ca_path, "wrong")):
            pytest.fail("init must not succeed with wrong credentials")
    message = str(caught.value)
    assert "Authentication failed" in message
    assert "KAFKA_API_KEY" in message
    assert caught.value.lambda_error_type == "Extension.AuthError"


def test_an_unknown_producer_property_fails_init_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KAFKA_PRODUCER_NO_SUCH_PROPERTY") as caught:  # noqa: SIM117
        with running_relay("127.0.0.1:9", tmp_path,
                           env_extra={"KAFKA_PRODUCER_NO_SUCH_PROPERTY": "1"}):
            pytest.fail("init must not succeed with an unknown librdkafka property")
    assert "librdkafka" in str(caught.value)
