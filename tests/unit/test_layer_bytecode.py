"""The layer ships .pyc per Python version an interpreter exists for, reproducibly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from layer_build.bytecode import add_bytecode, find_interpreters
from layer_build.zipper import FileTree

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
TAG = sys.implementation.cache_tag


def _tree() -> FileTree:
    tree = FileTree()
    tree.add("python/pkg/__init__.py", b"", executable=False)
    tree.add("python/pkg/mod.py", b"def boom():\n    raise ValueError('x')\n", executable=False)
    tree.add("extensions/kafka-relay", b"#!/bin/sh\n", executable=True)
    return tree


def test_each_module_gets_a_pyc_for_the_interpreter_and_nothing_else_changes() -> None:
    tree = _tree()
    added = add_bytecode(tree, {HERE: sys.executable})
    assert added == 2
    assert set(tree.names()) == {
        "python/pkg/__init__.py", "python/pkg/mod.py", "extensions/kafka-relay",
        f"python/pkg/__pycache__/__init__.{TAG}.pyc", f"python/pkg/__pycache__/mod.{TAG}.pyc"}


def test_the_pycs_are_the_same_bytes_each_build_and_carry_no_build_path(tmp_path: Path) -> None:
    first, second = _tree(), _tree()
    add_bytecode(first, {HERE: sys.executable})
    add_bytecode(second, {HERE: sys.executable})
    assert [e.data for _, e in first.items()] == [e.data for _, e in second.items()]
    pyc = dict(first.items())[f"python/pkg/__pycache__/mod.{TAG}.pyc"].data
    assert b"/opt/python/pkg/mod.py" in pyc
    assert b"kafka-relay-pyc-" not in pyc


def test_the_shipped_pyc_is_what_runs_even_where_the_source_says_otherwise(
        tmp_path: Path) -> None:
    """unchecked-hash: the zip's fixed mtimes and a read-only /opt never trigger a recompile."""
    tree = _tree()
    add_bytecode(tree, {HERE: sys.executable})
    for name, entry in tree.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.data)
    (tmp_path / "python/pkg/mod.py").write_text("def boom():\n    return 'source'\n")
    run = subprocess.run([sys.executable, "-c", "import pkg.mod; pkg.mod.boom()"],
                         check=False, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(tmp_path / "python"),
                              "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 1
    assert "ValueError: x" in run.stderr


def test_no_interpreter_means_no_pyc() -> None:
    tree = _tree()
    assert add_bytecode(tree, {}) == 0
    assert len(tree) == 3


def test_interpreters_are_kept_only_when_they_say_they_are_that_version(
        tmp_path: Path) -> None:
    for name in ("python3.12", "python3.13"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    answers = {str(tmp_path / "python3.12"): "3.12\n", str(tmp_path / "python3.13"): "3.11\n"}

    def run(argv: list[str]) -> str:
        return answers[argv[0]]

    env = {"PATH": str(tmp_path), "PYENV_ROOT": str(tmp_path / "no-pyenv")}
    found = find_interpreters(("3.12", "3.13", "3.14"), env=env, run=run)
    assert found == {"3.12": str(tmp_path / "python3.12")}
