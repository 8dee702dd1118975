"""Compiled ``.pyc`` files for the layer's Python, one set per runtime an interpreter exists for.

``/opt`` is read-only on Lambda, so a layer without ``__pycache__`` compiles every module it
imports at every cold start (~45 ms of the extension's CPU before ready). Each Python version
writes its own ``__pycache__/<name>.cpython-3XY.pyc``, so only an interpreter of that version
can make them: versions without one here ship sources only and still work (compiled at
start, as before). ``unchecked-hash`` pycs are never checked against the source's mtime
(zip entries carry a fixed date) and make the artifact reproducible.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from layer_build.zipper import FileTree

#: Where Lambda unpacks the layer's ``python/``: recorded in the pycs instead of the build's
#: temporary directory, which would make every build differ.
LAMBDA_PYTHON_DIR = "/opt/python"

Runner = Callable[[list[str]], str]


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout


def _candidates(version: str, env: Mapping[str, str]) -> list[str]:
    """``pythonX.Y`` on PATH, then pyenv's installs of that version (shims may refuse)."""
    found = [shutil.which(f"python{version}", path=env.get("PATH"))]
    root = env.get("PYENV_ROOT") or os.path.join(env.get("HOME", "/root"), ".pyenv")
    found += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin",
                                           f"python{version}")))
    return [path for path in found if path]


def find_interpreters(versions: tuple[str, ...], *, env: Mapping[str, str] = os.environ,
                      run: Runner = _run) -> dict[str, str]:
    """An interpreter per version that has one here (verified by asking it)."""
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    out: dict[str, str] = {}
    for version in versions:
        for path in _candidates(version, env):
            try:
                if run([path, "-c", probe]).strip() == version:
                    out[version] = path
                    break
            except (OSError, subprocess.SubprocessError):
                continue
    return out


def add_bytecode(tree: FileTree, interpreters: Mapping[str, str], *, prefix: str = "python/",
                 run: Runner = _run) -> int:
    """Compile every ``.py`` under ``prefix`` with each interpreter; add the ``.pyc`` files
    to the tree. How many were added."""
    sources = [(name, entry.data) for name, entry in tree.items()
               if name.startswith(prefix) and name.endswith(".py")]
    if not sources or not interpreters:
        return 0
    added = 0
    with tempfile.TemporaryDirectory(prefix="kafka-relay-pyc-") as scratch:
        base = Path(scratch)
        for name, data in sources:
            path = base / name[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for version in sorted(interpreters):
            run([interpreters[version], "-m", "compileall", "-q",
                 "--invalidation-mode", "unchecked-hash", "-s", str(base),
                 "-p", LAMBDA_PYTHON_DIR, str(base)])
        for pyc in sorted(base.rglob("*.pyc")):
            tree.add(prefix + pyc.relative_to(base).as_posix(), pyc.read_bytes(),
                     executable=False)
            added += 1
    return added
