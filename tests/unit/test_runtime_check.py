"""A layer the runtime cannot load fails init with a ConfigError naming runtime, arch and fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from kafka_relay.errors import ConfigError
from kafka_relay.producer.runtime_check import (
    LayerBinaries,
    RuntimeFacts,
    RuntimeMismatchError,
    require_confluent_kafka,
)

PY311_X86 = RuntimeFacts(python="3.11", interpreter="/var/lang/bin/python3.11",
                         machine="x86_64", glibc="2.26")
PY313_ARM = RuntimeFacts(python="3.13", interpreter="/var/lang/bin/python3.13",
                         machine="aarch64", glibc="2.34")


def fake_layer(tmp_path: Path, machine: str, *pythons: str) -> Path:
    package = tmp_path / "confluent_kafka"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for version in pythons:
        tag = version.replace(".", "")
        (package / f"cimpl.cpython-{tag}-{machine}-linux-gnu.so").write_bytes(b"\x7fELF")
    return package


def failing(message: str, kind: type[Exception] = ImportError) -> Callable[[], ModuleType]:
    def importer() -> ModuleType:
        raise kind(message)
    return importer


def mismatch(tmp_path: Path, facts: RuntimeFacts, error: Exception, machine: str,
             *pythons: str) -> RuntimeMismatchError:
    package = fake_layer(tmp_path, machine, *pythons)
    with pytest.raises(RuntimeMismatchError) as caught:
        require_confluent_kafka(importer=failing(str(error), type(error)), facts=facts,
                                package_dir=lambda: package)
    return caught.value


def test_a_layer_for_other_python_versions_names_the_runtime_and_the_runtimes_to_use(
    tmp_path: Path,
) -> None:
    error = mismatch(tmp_path, PY311_X86, ImportError("No module named 'confluent_kafka.cimpl'"),
                     "x86_64", "3.12", "3.13", "3.14")

    message = str(error)
    assert isinstance(error, ConfigError)
    assert error.lambda_error_type == "Extension.ConfigError"
    assert message.startswith(
        "kafka-relay cannot load confluent-kafka on python3.11 "
        "(/var/lang/bin/python3.11) on x86_64 (platform.machine() x86_64, "
        "glibc 2.26): this layer carries binaries for python3.12, python3.13, python3.14 only"
    )
    assert "Set the function's runtime to one of python3.12, python3.13, python3.14" in message
    assert "No module named 'confluent_kafka.cimpl'" in message  # the cause, kept short


def test_a_layer_for_another_architecture_names_the_layer_to_attach(tmp_path: Path) -> None:
    error = mismatch(tmp_path, PY313_ARM, ImportError("cimpl...so: cannot open shared object"),
                     "x86_64", "3.12", "3.13", "3.14")

    assert "python3.13 (/var/lang/bin/python3.13) on arm64" in str(error)
    assert "this layer is built for x86_64" in str(error)
    assert "Attach kafka-relay-layer-arm64.zip, or set the function's architecture to x86_64" \
        in str(error)


def test_a_glibc_too_old_for_the_wheels_names_the_glibc_needed(tmp_path: Path) -> None:
    facts = RuntimeFacts(python="3.12", interpreter="", machine="x86_64", glibc="2.26")
    error = mismatch(tmp_path, facts, ImportError(
        "/lib64/libc.so.6: version `GLIBC_2.28' not found (required by librdkafka.so.1)"),
        "x86_64", "3.12")

    assert "python3.12 on x86_64 (platform.machine() x86_64, glibc 2.26)" in str(error)
    assert "its binaries need glibc >= 2.28" in str(error)
    assert "Use a runtime on Amazon Linux 2023: one of python3.12" in str(error)


def test_a_missing_package_and_os_errors_are_config_errors_too(tmp_path: Path) -> None:
    with pytest.raises(RuntimeMismatchError, match="the layer holds no confluent-kafka binaries"):
        require_confluent_kafka(importer=failing("No module named 'confluent_kafka'"),
                                facts=PY311_X86, package_dir=lambda: None)
    error = mismatch(tmp_path, PY311_X86, OSError("librdkafka.so.1: invalid ELF header"),
                     "x86_64", "3.11")
    assert "(OSError: librdkafka.so.1: invalid ELF header)" in str(error)
    assert "rebuild kafka-relay-layer-x86_64.zip with ./build.sh build" in str(error)


def test_a_loadable_confluent_kafka_passes_and_facts_come_from_the_interpreter() -> None:
    require_confluent_kafka()  # this interpreter has it installed

    facts = RuntimeFacts.current()
    assert facts.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert facts.interpreter == sys.executable
    assert "AWS_EXECUTION_ENV" not in facts.describe()
    assert facts.machine  # whatever this machine is
    assert LayerBinaries.beside(None) == LayerBinaries((), ())
