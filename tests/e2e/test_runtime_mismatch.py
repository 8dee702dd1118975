"""A layer built for another Python, run in the sandbox: init fails with a ConfigError that
names the runtime, the architecture and the runtimes the layer does load on."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from devtools.kafka_broker import free_port
from devtools.sandbox import Sandbox, SandboxInitError
from kafka_relay.tools.table import events_named
from layer_build.build import BuildConfig, Builder

FUNCTION = Path(__file__).resolve().parent.parent / "fixtures" / "any_function"


def test_a_layer_for_another_python_fails_init_naming_runtime_arch_and_layer(
    tmp_path: Path,
) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    other = "3.13" if here != "3.13" else "3.12"
    # The layer alone: the function and views zips play no part here.
    layer = Builder(BuildConfig(out=tmp_path / "dist", arches=("x86_64",),
                                python_versions=(other,)), log=lambda _line: None).layer("x86_64")
    if platform.machine() != "x86_64":
        pytest.skip("the sandbox runs the x86_64 layer only on an x86_64 machine")
    sandbox = Sandbox(
        layers=[tmp_path / "dist" / layer.file], function=FUNCTION,
        handler="any_producer.handler",
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "KAFKA_TOPIC": "t",
             "KAFKA_RELAY_PORT": str(free_port())},
        function_name="wrong-runtime", timeout_s=10.0,
    )

    with sandbox, pytest.raises(SandboxInitError) as caught:
        sandbox.start()
    lines = sandbox.log_lines()

    assert caught.value.error_type == "Extension.ConfigError"
    assert caught.value.source == "kafka-relay"
    message = caught.value.message
    assert message.startswith(f"kafka-relay cannot load confluent-kafka on python{here} (")
    assert ") on x86_64 (platform.machine() x86_64" in message
    assert f"this layer carries binaries for python{other} only" in message
    (logged,) = events_named(lines, "init.error")
    assert logged["error_type"] == "Extension.ConfigError"
    assert not [line for line in lines if "Traceback" in line]
