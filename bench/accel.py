"""Build and load ``bench/relay_accel.c`` (the C accelerator the alternatives bench measures).

One ``gcc -shared`` against this interpreter's headers (``sysconfig``), no setuptools: the
module lands in a directory the caller owns and is loaded from its path, so nothing is
installed. Stubs for the type checker are the ``Accel`` protocol below.
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


class BuildError(RuntimeError):
    """The accelerator could not be compiled here; the message says why."""


def build(directory: Path) -> Path:
    """Compile the module into ``directory``; its path."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BuildError("no C compiler (gcc or cc) on PATH")
    target = directory / f"{NAME}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    command = [compiler, "-O2", "-shared", "-fPIC", "-Wall", "-Werror",
               f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(target)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    return target


def load(path: Path) -> Accel:
    """The module built at ``path``."""
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise BuildError(f"{path} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Accel, module)
