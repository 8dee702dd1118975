"""Build and load the C modules the alternatives bench measures: ``bench/relay_accel.c`` (the
C accelerator) and ``bench/relay_rdkafka.c`` (a relay producing straight into librdkafka,
linked against the librdkafka confluent-kafka's wheel bundles).

One ``gcc -shared`` against this interpreter's headers (``sysconfig``), no setuptools: a
module lands in a directory the caller owns and is loaded from its path, so nothing is
installed. Stubs for the type checker are the ``Accel`` and ``Rdkafka`` protocols below.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

SOURCE = Path(__file__).with_name("relay_accel.c")
NAME = "relay_accel"
RDKAFKA_SOURCE = Path(__file__).with_name("relay_rdkafka.c")
RDKAFKA_NAME = "relay_rdkafka"


class Settle(Protocol):
    outstanding: int
    failed: list[tuple[Any, Any]]

    def __call__(self, error: Any, message: Any) -> None: ...


class Accel(Protocol):
    """What ``relay_accel`` exports (see the C source's comment)."""

    def encode(self, records: list[dict[str, Any]],
               scan: Callable[[Any, int], Any]) -> bytes | None: ...

    def check(self, body: Any, has_default_topic: bool) -> int: ...

    def produce_all(self, body: Any, start: int, produce: Callable[..., None],  # noqa: PLR0917 - the C function's
                    default_topic: str, id_prefix: str, first_id: int,
                    on_delivery: Settle) -> int: ...

    def Settle(self, count: int) -> Settle: ...


class Counter(Protocol):
    outstanding: int
    failed: int


class RdProducer(Protocol):
    def produce_body(self, body: Any, start: int, default_topic: str,  # noqa: PLR0917 - C's
                     id_prefix: str, first_id: int, counter: Counter) -> int: ...

    def poll(self, timeout_ms: int) -> int: ...

    def flush(self, timeout_ms: int) -> int: ...


class Rdkafka(Protocol):
    """What ``relay_rdkafka`` exports (see the C source's comment)."""

    def Producer(self, settings: dict[str, str]) -> RdProducer: ...

    def Counter(self, count: int) -> Counter: ...


class BuildError(RuntimeError):
    """The accelerator could not be compiled here; the message says why."""


def build(directory: Path) -> Path:
    """Compile the accelerator into ``directory``; its path."""
    return _compile(SOURCE, directory / f"{NAME}{_suffix()}", [])


def build_rdkafka(directory: Path) -> Path:
    """Compile the librdkafka relay into ``directory``, linked against the librdkafka of the
    installed confluent-kafka wheel (found next to its package); its path."""
    import confluent_kafka  # noqa: PLC0415 - only where confluent-kafka is installed

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise BuildError(f"no librdkafka in {libs}: this confluent-kafka is not a wheel that "
                         "bundles it")
    return _compile(RDKAFKA_SOURCE, directory / f"{RDKAFKA_NAME}{_suffix()}",
                    [f"-L{libs}", f"-l:{found[0].name}", f"-Wl,-rpath,{libs}"])


def _suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def _compile(source: Path, target: Path, link: list[str]) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BuildError("no C compiler (gcc or cc) on PATH")
    command = [compiler, "-O2", "-shared", "-fPIC", "-Wall", "-Werror",
               f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(target), *link]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    return target


def load(path: Path) -> Accel:
    """The accelerator built at ``path``."""
    return cast(Accel, _load(path))


def load_rdkafka(path: Path) -> Rdkafka:
    """The librdkafka relay built at ``path``."""
    return cast(Rdkafka, _load(path))


def _load(path: Path) -> object:
    name = path.name.split(".", 1)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BuildError(f"{path} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
