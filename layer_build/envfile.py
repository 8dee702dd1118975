"""``.env`` files: the functions' environment, one ``KEY=VALUE`` a line.

Accepted: blank lines and ``# comments``; an optional ``export`` prefix;
unquoted values (a `` #`` after whitespace starts a comment, surrounding
whitespace is dropped); ``'single quoted'`` values taken literally;
``"double quoted"`` values with ``\\n \\t \\r \\" \\\\`` escapes. No
``$VAR`` expansion and no multi-line values: what the file says is what the
function gets. A later line for the same key wins.
"""

from __future__ import annotations

import re
from pathlib import Path

from layer_build.errors import EnvFileError

_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _double_quoted(body: str, where: str) -> tuple[str, str]:
    """The unescaped value of ``body`` (after its opening quote) and what follows the close."""
    chars: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == '"':
            return "".join(chars), body[index + 1 :]
        if char == "\\" and index + 1 < len(body):
            escaped = body[index + 1]
            chars.append(_ESCAPES.get(escaped, "\\" + escaped))
            index += 2
            continue
        chars.append(char)
        index += 1
    raise EnvFileError(f"{where}: the double-quoted value has no closing quote")


def _value(raw: str, where: str) -> str:
    if raw[:1] == '"':
        value, rest = _double_quoted(raw[1:], where)
    elif raw[:1] == "'":
        close = raw.find("'", 1)
        if close < 0:
            raise EnvFileError(f"{where}: the single-quoted value has no closing quote")
        value, rest = raw[1:close], raw[close + 1 :]
    else:
        return re.split(r"\s+#", raw, maxsplit=1)[0].strip()
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise EnvFileError(
            f"{where}: unexpected {rest!r} after the quoted value; quote the whole value"
        )
    return value


def parse_env_text(text: str, *, source: str = "<env>") -> dict[str, str]:
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}:{number}"
        matched = _ASSIGNMENT.match(stripped)
        if matched is None:
            raise EnvFileError(
                f"{where}: expected KEY=VALUE (KEY of letters, digits and _), got {stripped!r}"
            )
        variables[matched[1]] = _value(matched[2], where)
    return variables


def parse_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvFileError(
            f"env file {path} not found: create it with the functions' settings "
            "(KAFKA_BOOTSTRAP_SERVERS=..., see .env.example) or pass --env-file"
        ) from None
    return parse_env_text(text, source=str(path))
