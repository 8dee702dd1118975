"""The table of variables in config.py is the one the extension reads and the one the docs
render: every variable read anywhere in extension/ is in it, and load_config obeys it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_relay.config import VARIABLES, Variable, load_config
from kafka_relay.errors import ConfigError

EXTENSION = Path(__file__).resolve().parents[2] / "extension"
ENV_NAME = re.compile(r"(KAFKA|RSS|VIEWS)_[A-Z0-9_]+|DLQ_TOPIC")
# Names of that shape that are not variables: the marker of spilled-record log lines.
NOT_VARIABLES = {"KAFKA_RELAY_SPILL"}
BOUNDED = [v for v in VARIABLES if v.maximum and "extension" in v.reader]


def names_in_python(path: Path) -> set[str]:
    """Every string constant in ``path`` that is, whole, an environment name."""
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and ENV_NAME.fullmatch(node.value)}


def names_read() -> set[str]:
    found = set().union(*map(names_in_python, EXTENSION.rglob("*.py")))
    launcher = (EXTENSION / "kafka-relay").read_text()
    found |= set(re.findall(r"\$\{?((?:KAFKA)_[A-Z0-9_]+)", launcher))
    return found - NOT_VARIABLES


def covered(name: str) -> bool:
    return any(variable.covers(name) for variable in VARIABLES)


def test_every_variable_read_in_the_extension_is_in_the_table() -> None:
    read = names_read()

    assert {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_RELAY_PORT", "KAFKA_RELAY_PYTHON",
            "KAFKA_RELAY_FALLBACK"} <= read  # the scan sees Python and the launcher
    assert [name for name in sorted(read) if not covered(name)] == []


def test_the_scan_would_catch_a_variable_missing_from_the_table() -> None:
    assert not covered("KAFKA_RELAY_SOMETHING_NEW")
    assert covered("KAFKA_PRODUCER_LINGER_MS")  # the KAFKA_PRODUCER_<PROPERTY> family
    assert covered("DLQ_TOPIC")  # an alias


def test_every_entry_is_documented_once() -> None:
    names = [name for variable in VARIABLES for name in variable.names]

    assert len(names) == len(set(names))
    assert all(variable.doc and variable.kind for variable in VARIABLES)


@pytest.mark.parametrize("variable", BOUNDED, ids=lambda v: v.name)
def test_load_config_holds_each_number_to_the_bounds_in_the_table(variable: Variable) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}

    with pytest.raises(ConfigError, match=variable.name):
        load_config({**env, variable.name: str(variable.maximum + 1)})
    load_config({**env, variable.name: str(variable.maximum)})
    if variable.minimum:
        with pytest.raises(ConfigError, match=variable.name):
            load_config({**env, variable.name: str(variable.minimum - 1)})


@given(value=st.integers(min_value=0, max_value=10**12))
def test_the_handoff_port_accepts_exactly_the_range_in_the_table(value: int) -> None:
    port = next(v for v in VARIABLES if v.name == "KAFKA_RELAY_PORT")
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", port.name: str(value)}

    if port.minimum <= value <= port.maximum:
        assert load_config(env).port == value
    else:
        with pytest.raises(ConfigError, match=port.name):
            load_config(env)


def test_defaults_in_the_table_are_the_defaults_load_config_gives() -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    by_name = {v.name: v.default for v in VARIABLES}

    assert (config.flush_budget_ms, config.max_latency_ms, config.port, config.max_attempts,
            config.retry_backoff_ms, config.max_body_bytes, config.shutdown_margin_ms,
            config.init_probe_ms, config.journal, config.telemetry, config.log_level,
            str(config.flush)) == (
        by_name["KAFKA_RELAY_FLUSH_BUDGET_MS"], by_name["KAFKA_RELAY_MAX_LATENCY_MS"],
        by_name["KAFKA_RELAY_PORT"], by_name["KAFKA_RELAY_MAX_ATTEMPTS"],
        by_name["KAFKA_RELAY_RETRY_BACKOFF_MS"], by_name["KAFKA_RELAY_MAX_BODY_BYTES"],
        by_name["KAFKA_RELAY_SHUTDOWN_MARGIN_MS"], by_name["KAFKA_RELAY_INIT_PROBE_MS"],
        by_name["KAFKA_RELAY_JOURNAL"], by_name["KAFKA_RELAY_TELEMETRY"],
        by_name["KAFKA_RELAY_LOG_LEVEL"], by_name["KAFKA_RELAY_FLUSH"])
