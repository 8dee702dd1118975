"""The runtime's shape, read from its source: small classes, Lambda's names defined once, one
reader of the initialization type, and the one import import-linter cannot see.

The operator tools (``kafka_relay/tools``) are not the runtime and are not measured here.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "extension" / "kafka_relay"
MAX_METHODS = 15
MAX_CLASS_LINES = 250


def _runtime_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "tools" not in p.relative_to(PACKAGE).parts)


def _trees() -> Iterator[tuple[str, ast.Module]]:
    for path in _runtime_files():
        yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text(encoding="utf-8"))


def _classes() -> Iterator[tuple[str, ast.ClassDef]]:
    for name, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                yield name, node


def _oversized(classes: Iterator[tuple[str, ast.ClassDef]]) -> list[str]:
    found = []
    for name, node in classes:
        methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        if methods > MAX_METHODS or lines > MAX_CLASS_LINES:
            found.append(f"{name}:{node.name} ({methods} methods, {lines} lines)")
    return found


def test_no_runtime_class_has_more_than_15_methods_or_250_lines() -> None:
    assert _oversized(_classes()) == []


def test_the_size_rule_sees_a_class_that_grew_too_large() -> None:
    body = "".join(f"    def m{i}(self) -> None: ...\n" for i in range(MAX_METHODS + 1))
    (node,) = [n for n in ast.parse("class Big:\n" + body).body if isinstance(n, ast.ClassDef)]
    assert _oversized(iter([("big.py", node)])) == ["big.py:Big (16 methods, 17 lines)"]


def _string_constants(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


@pytest.mark.parametrize("name", ["AWS_LAMBDA_INITIALIZATION_TYPE", "INVOKE", "SHUTDOWN"])
def test_lambdas_names_are_spelled_in_aws_lambda_only(name: str) -> None:
    spelled = [file for file, tree in _trees() if name in _string_constants(tree)]
    assert spelled == ["aws_lambda.py"]


def _dynamic_imports() -> list[tuple[str, str]]:
    """(file, module) of every import_module/__import__ call with a literal name."""
    found = []
    for file, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                arg = node.args[0] if node.args else None
                module = arg.value if isinstance(arg, ast.Constant) else "<computed>"
                found.append((file, str(module)))
    return found


def test_the_one_dynamic_import_is_the_clients_direct_fallback() -> None:
    # import-linter cannot follow it: kafka_relay.direct must stay importable by that name.
    assert _dynamic_imports() == [("client.py", "kafka_relay.direct")]
    assert importlib.util.find_spec("kafka_relay.direct") is not None
