"""Load confluent-kafka's compiled module, or say which layer and runtime would load it.

A layer built for other Python versions, another architecture or a newer glibc
fails deep inside ``import confluent_kafka``; Lambda would show that as an
ImportError traceback. This turns it into an ``Extension.ConfigError`` naming the
runtime, the architecture and what to deploy instead. Stdlib only: it runs
before anything imports confluent-kafka. What only a mismatch needs (``platform``, ``re``,
``pathlib``) is imported then: the check runs at every start.

The runtime is read from the interpreter the extension runs under (the function's own
``python3``, ``/var/lang/bin`` in Lambda), never from ``AWS_EXECUTION_ENV``: Lambda gives
that variable to the runtime process, not to extensions.
"""

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from kafka_relay.errors import ConfigError
from kafka_relay.producer.core_import import import_core

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

#: Lambda's architecture names by ``platform.machine()``.
LAMBDA_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
_CIMPL = r"^cimpl\.cpython-(\d)(\d+)-([a-z0-9_]+)-linux-gnu\.so$"
_GLIBC_NEEDED = r"GLIBC_(\d+\.\d+)"


class RuntimeMismatchError(ConfigError):
    """The layer's compiled confluent-kafka cannot load on this Lambda runtime."""


class RuntimeFacts(NamedTuple):
    python: str  # "3.11"
    interpreter: str  # sys.executable, e.g. /var/lang/bin/python3.11 in Lambda
    machine: str  # platform.machine(): x86_64 | aarch64
    glibc: str  # "2.26"; "" when not glibc

    @classmethod
    def current(cls) -> "RuntimeFacts":
        import platform  # noqa: PLC0415 - ~3 ms at every start, needed only on a mismatch

        libc, version = platform.libc_ver()
        return cls(
            python=f"{sys.version_info.major}.{sys.version_info.minor}",
            interpreter=sys.executable,
            machine=platform.machine(),
            glibc=version if libc == "glibc" else "",
        )

    @property
    def arch(self) -> str:
        return LAMBDA_ARCH.get(self.machine, self.machine)

    def describe(self) -> str:
        runtime = f"python{self.python}"
        if self.interpreter:
            runtime += f" ({self.interpreter})"
        glibc = f", glibc {self.glibc}" if self.glibc else ""
        return f"{runtime} on {self.arch} (platform.machine() {self.machine}{glibc})"


class LayerBinaries(NamedTuple):
    """Which Python versions and machines the layer's ``cimpl`` modules are built for."""

    pythons: tuple[str, ...]
    machines: tuple[str, ...]

    @classmethod
    def beside(cls, package_dir: "Path | None") -> "LayerBinaries":
        import re  # noqa: PLC0415 - a mismatch only

        pythons: set[str] = set()
        machines: set[str] = set()
        if package_dir is not None and package_dir.is_dir():
            for path in package_dir.iterdir():
                matched = re.match(_CIMPL, path.name)
                if matched:
                    pythons.add(f"{matched[1]}.{matched[2]}")
                    machines.add(matched[3])
        return cls(tuple(sorted(pythons, key=_version_key)), tuple(sorted(machines)))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _confluent_kafka_dir() -> "Path | None":
    """Where ``confluent_kafka`` would be imported from, without importing it."""
    from pathlib import Path  # noqa: PLC0415 - a mismatch only

    try:
        spec = importlib.util.find_spec("confluent_kafka")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def mismatch_message(facts: RuntimeFacts, layer: LayerBinaries, error: BaseException) -> str:
    """What is wrong, in Lambda's terms, and which layer/runtime to use instead."""
    head = f"kafka-relay cannot load confluent-kafka on {facts.describe()}"
    cause = f"({type(error).__name__}: {error})"
    arch_layer = f"kafka-relay-layer-{facts.arch}.zip"
    if not layer.pythons:
        return (f"{head}: the layer holds no confluent-kafka binaries {cause}. Attach the "
                f"{arch_layer} layer built by ./build.sh build")
    runtimes = ", ".join(f"python{version}" for version in layer.pythons)
    if facts.machine not in layer.machines:
        built_for = ", ".join(LAMBDA_ARCH.get(m, m) for m in layer.machines)
        return (f"{head}: this layer is built for {built_for} {cause}. Attach {arch_layer}, "
                f"or set the function's architecture to {built_for}")
    if facts.python not in layer.pythons:
        return (f"{head}: this layer carries binaries for {runtimes} only {cause}. Set the "
                f"function's runtime to one of {runtimes} (python3.10 and python3.11 run on "
                "Amazon Linux 2, which cannot load confluent-kafka 2.16.1), or rebuild the "
                f"layer with ./build.sh build --python-version {facts.python}")
    import re  # noqa: PLC0415 - a mismatch only

    needed = re.search(_GLIBC_NEEDED, str(error))
    if needed:
        return (f"{head}: its binaries need glibc >= {needed[1]} {cause}. Use a runtime on "
                f"Amazon Linux 2023: one of {runtimes}")
    return (f"{head} {cause}. The layer carries binaries for {runtimes} on "
            f"{', '.join(layer.machines)}: rebuild {arch_layer} with ./build.sh build")


def require_confluent_kafka(
    *,
    importer: "Callable[[], ModuleType]" = import_core,
    facts: RuntimeFacts | None = None,
    package_dir: "Callable[[], Path | None]" = _confluent_kafka_dir,
) -> None:
    """Import confluent-kafka; raise RuntimeMismatchError if its binaries cannot load here."""
    try:
        importer()
    except (ImportError, OSError) as exc:
        facts = facts or RuntimeFacts.current()
        raise RuntimeMismatchError(
            mismatch_message(facts, LayerBinaries.beside(package_dir()), exc)
        ) from exc
