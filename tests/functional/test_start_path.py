"""What the extension loads before it tells Lambda it is ready, in a fresh interpreter: on demand
nothing of the delivery engine, the modes or the handoff server; no module whose import costs
milliseconds it does not need; no NamedTuple whose annotations typing compiles again; and
without ``site`` the runtime's AWS SDK still comes when asked for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "extension"

# What ``__main__`` imports up to its early /next (register, configuration, API client, the
# runtime check with the bare confluent_kafka, then ``prepare``).
_BEFORE_READY = (
    "import sys, kafka_relay.lifecycle.register, kafka_relay.config, kafka_relay.errors, "
    "kafka_relay.lifecycle.api, kafka_relay.observability.log; "
    "from kafka_relay.producer.runtime_check import require_confluent_kafka; "
    "require_confluent_kafka(); import kafka_relay.prepare; "
)


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=EXTENSION_DIR).stdout
    return set(ast.literal_eval(out.splitlines()[-1]))


def test_before_an_early_next_nothing_of_the_engine_the_modes_or_the_server_is_loaded() -> None:
    loaded = _loaded(_BEFORE_READY)
    assert "kafka_relay.prepare" in loaded
    later = {m for m in loaded if m.startswith(("kafka_relay.delivery", "kafka_relay.modes",
                                                "kafka_relay.spill"))}
    later |= loaded & {"kafka_relay.app", "kafka_relay.handoff.server",
                       "kafka_relay.handoff.schema", "kafka_relay.lifecycle.loop"}
    assert later == set()


def test_the_start_path_loads_no_module_it_does_not_need() -> None:
    """asyncio (confluent_kafka's package init), dataclasses/inspect, logging, ssl, email,
    http.client, platform; the idna codec comes with a str host given to getaddrinfo."""
    code = (_BEFORE_READY + "import kafka_relay.app; "
            "from kafka_relay.httpconn import Connection; import socket; "
            "s = socket.create_server(('127.0.0.1', 0)); "
            "Connection(f'127.0.0.1:{s.getsockname()[1]}').close(); ")
    loaded = _loaded(code)
    heavy = {"asyncio", "dataclasses", "inspect", "logging", "ssl", "email", "http.client",
             "platform", "uuid", "hashlib", "encodings.idna", "argparse", "concurrent.futures"}
    assert loaded & heavy == set()


def test_no_namedtuple_on_the_start_path_postpones_its_annotations() -> None:
    """typing compiles each postponed (string) annotation of a NamedTuple field again, at
    every import: ~18 M instructions over the start path's NamedTuples."""
    code = (_BEFORE_READY + "import kafka_relay.app, __future__; "
            "postponed = sorted(n for n, m in list(sys.modules.items()) "
            "if n.startswith('kafka_relay') and getattr(m, 'annotations', None) is "
            "__future__.annotations and any(isinstance(v, type) and issubclass(v, tuple) and "
            "hasattr(v, '_fields') and v.__module__ == n for v in vars(m).values())); "
            "print(postponed); ")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=EXTENSION_DIR).stdout
    assert ast.literal_eval(out.splitlines()[0]) == []


def test_without_site_the_runtime_sdk_is_importable_once_asked_for() -> None:
    """The layer's launcher runs ``python3 -S``; botocore lives in the runtime's
    site-packages."""
    code = ("import importlib.util as u, sys; from kafka_relay.aws_lambda import sdk_importable; "
            "before = u.find_spec('botocore') is not None; sdk_importable(); "
            "import botocore; print(before, sys.flags.no_site)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=EXTENSION_DIR).stdout
    assert out.split() == ["False", "1"]
