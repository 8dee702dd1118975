"""The environments publish-layer prints and .env.example shows, one per KAFKA_AUTH mode,
are complete: the extension's own load_config accepts each as the mode it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from kafka_relay.config import AUTH_MODES, MSK_PORTS
from layer_build.function_env import AUTH_ENVIRONMENTS, environment_lines
from tests.function_envs import environments_in, in_lambda

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
BY_MODE = {auth.mode: auth for auth in AUTH_ENVIRONMENTS}


def test_there_is_one_environment_per_auth_mode() -> None:
    assert sorted(BY_MODE) == sorted(AUTH_MODES)


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_each_environment_is_accepted_by_load_config_as_its_mode(mode: str) -> None:
    config = in_lambda(dict(BY_MODE[mode].variables))

    assert config.auth == mode


@pytest.mark.parametrize(("mode", "kind"), [("msk-iam", "msk-iam"), ("scram", "scram")])
def test_msk_examples_use_the_listener_ports_the_extension_names(mode: str, kind: str) -> None:
    private, public = MSK_PORTS[kind]
    auth = BY_MODE[mode]

    assert f"port {private} inside AWS, {public} over public access" in auth.title
    brokers = dict(auth.variables)["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    assert {broker.rpartition(":")[2] for broker in brokers} == {str(private)}


def test_what_publish_layer_prints_parses_back_into_accepted_environments() -> None:
    printed = environments_in("\n".join(environment_lines()))

    assert sorted(printed) == sorted(AUTH_MODES)
    for mode, env in printed.items():
        assert in_lambda(env).auth == mode


def test_env_example_shows_every_mode_and_each_is_accepted() -> None:
    shown = environments_in(ENV_EXAMPLE.read_text())

    assert sorted(shown) == sorted(AUTH_MODES)
    for mode, env in shown.items():
        assert in_lambda(env).auth == mode, mode
