"""Import rules that import-linter cannot express: the handler side is stdlib only.

The layering inside the extension (lifecycle ↛ handoff, the engine knows no HTTP,
nothing imports dev tools) is checked by ``lint-imports`` in ``./build.sh test``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "extension" / "kafka_relay"
FUNCTIONS = REPO / "function"


def _imports(path: Path) -> Iterator[str]:
    """Every module a file imports at any level (top level, functions, conditionals)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "kafka_relay":
                yield from (f"kafka_relay.{alias.name}" for alias in node.names)
            else:
                yield node.module


def _top(module: str) -> str:
    return module.split(".", 1)[0]


# The handler side: the client, the wire protocol, the kept-alive connection and the ring
# file they share.
HANDLER_SIDE = {"kafka_relay.protocol", "kafka_relay.httpconn", "kafka_relay.ring"}


@pytest.mark.parametrize("name", ["client.py", "protocol.py", "httpconn.py", "ring.py",
                                  "__init__.py"])
def test_the_handler_side_of_the_layer_imports_only_the_stdlib_and_the_protocol(
    name: str,
) -> None:
    foreign = [m for m in _imports(PACKAGE / name)
               if _top(m) not in sys.stdlib_module_names and m not in HANDLER_SIDE]
    assert foreign == [], f"kafka_relay/{name} must stay stdlib-only: {foreign}"


@pytest.mark.parametrize("path", sorted(FUNCTIONS.glob("*.py")), ids=lambda p: p.name)
def test_functions_reach_the_layer_only_through_the_client(path: Path) -> None:
    imported = list(_imports(path))
    assert not [m for m in imported if _top(m) == "confluent_kafka"], \
        f"{path.name} imports a Kafka client: hand records to kafka_relay.client instead"
    layer = [m for m in imported if _top(m) == "kafka_relay"]
    assert set(layer) <= {"kafka_relay.client"}, f"{path.name} imports {layer}"


def test_the_rule_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import confluent_kafka\n    from kafka_relay import app\n")
    assert list(_imports(sample)) == ["confluent_kafka", "kafka_relay.app"]
