"""The documentation site's generated parts (an mkdocs hook: ``hooks:`` in mkdocs.yml).

A page holds a marker, ``<!-- generated: NAME -->``, where the code's own table goes:

- ``variables``: every environment variable, from ``kafka_relay.config.VARIABLES`` (the
  table ``load_config`` reads through);
- ``auth-environments``: one complete function environment per ``KAFKA_AUTH`` mode, from
  ``layer_build.function_env`` (what ``publish-layer`` prints).

So the reference cannot drift from the code. An unknown marker fails the build.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kafka_relay.config import VARIABLES, Variable
from layer_build.function_env import AUTH_ENVIRONMENTS, OPTIONAL_VARIABLES

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def _text(text: str) -> str:
    """Prose from the code, safe in Markdown: ``<topic>`` is not an HTML tag."""
    return text.replace("<", "&lt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def _default(variable: Variable) -> str:
    text = variable.default_text()
    if text == "unset":
        return "—"
    if text in ("required", "derived"):
        return text
    return "`" + text.replace("|", "\\|") + "`"


def _kind(variable: Variable) -> str:
    if variable.maximum:
        return f"{variable.kind}, {variable.minimum:,} to {variable.maximum:,}"
    return _cell(variable.kind)


def variables_table() -> str:
    rows = ["| variable | default | value | read by | meaning |", "|---|---|---|---|---|"]
    for variable in VARIABLES:
        names = " (alias " + ", ".join(f"`{a}`" for a in variable.aliases) + ")" if (
            variable.aliases) else ""
        rows.append(f"| `{variable.name}`{names} | {_default(variable)} | {_kind(variable)} "
                    f"| {variable.reader} | {_cell(variable.doc)} |")
    return "\n".join(rows)


def auth_environments() -> str:
    parts = []
    for auth in AUTH_ENVIRONMENTS:
        block = "\n".join(auth.lines())
        parts.append(f"**`KAFKA_AUTH={auth.mode}`** — {auth.title}. The execution role "
                     f"needs {_text(auth.grants)}.\n\n```ini\n{block}\n```")
    optional = "; ".join(f"`{name}` ({_text(meaning)})" for name, _value, meaning in
                         OPTIONAL_VARIABLES)
    parts.append(f"Optional in every mode: {optional}.")
    return "\n\n".join(parts)


GENERATORS: dict[str, Callable[[], str]] = {
    "variables": variables_table,
    "auth-environments": auth_environments,
}


def render(markdown: str) -> str:
    """``markdown`` with every marker replaced by what it names."""
    def replace(match: re.Match[str]) -> str:
        generator = GENERATORS.get(match[1])
        if generator is None:
            raise ValueError(f"unknown generated block {match[1]!r}: one of "
                             f"{', '.join(sorted(GENERATORS))}")
        return generator()
    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **_context: Any) -> str:
    """mkdocs hook: called with each page's Markdown before it is rendered."""
    return render(markdown)
