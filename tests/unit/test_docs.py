"""The docs hold to the code: every event and error type the extension can log is on the
troubleshooting page, the generated blocks render from the code's own tables, every shell
command shown either runs in the test suite or is marked as needing AWS, and the README
stays a short front page whose links resolve. (`mkdocs build --strict` runs in
./build.sh test.)"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import docs_site
from kafka_relay.config import VARIABLES
from layer_build.function_env import AUTH_ENVIRONMENTS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
EXTENSION = REPO / "extension" / "kafka_relay"
LOG_METHODS = {"debug", "info", "warning", "error"}
EVENT = re.compile(r"[a-z_]+\.[a-z_]+")
NEEDS_AWS = "# needs AWS"
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
SHELL_LANGUAGES = {"sh", "console", "bash", "shell"}
COMMAND_START = re.compile(
    r"^(\$ )?(\./build\.sh|python|pip|curl|terraform|aws|sam|kafka-relay-(logs|replay))\b")


# --- events and error types ------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    names: set[str]  # written out in the code
    patterns: set[str]  # built with an f-string: regexes over the page


def logged_events() -> Events:
    """Event names the extension logs: first arguments of logger calls, names passed on to a
    logging helper (same prefixes), and f-string names as patterns."""
    called: set[str] = set()
    constants: set[str] = set()
    patterns: set[str] = set()
    for path in EXTENSION.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    EVENT.fullmatch(node.value):
                constants.add(node.value)
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                called.add(first.value)
            elif isinstance(first, ast.JoinedStr) and all(
                    re.fullmatch(r"[a-z_.]*", str(part.value)) for part in first.values
                    if isinstance(part, ast.Constant)):  # an event, not a usage message
                patterns.add("".join(re.escape(str(part.value)) if isinstance(
                    part, ast.Constant) else "[a-z0-9_]+" for part in first.values))
    prefixes = {name.split(".")[0] for name in called if EVENT.fullmatch(name)}
    passed_on = {name for name in constants if name.split(".")[0] in prefixes}
    return Events({name for name in called | passed_on if EVENT.fullmatch(name)}, patterns)


def error_types() -> set[str]:
    found: set[str] = set()
    for path in EXTENSION.rglob("*.py"):
        found |= set(re.findall(r"\"(Extension\.[A-Za-z]+)\"", path.read_text()))
    return found


def documented(page: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_]+\.[A-Za-z_]+)`", page))


def test_every_event_the_extension_logs_is_on_the_troubleshooting_page() -> None:
    events = logged_events()
    page = documented(TROUBLESHOOTING.read_text())

    assert {"init.ready", "journal.locked", "breaker.open"} <= events.names  # the scan works
    assert sorted(events.names - page) == []
    for pattern in events.patterns:
        assert any(re.fullmatch(pattern, name) for name in page), pattern



def test_every_event_row_on_the_troubleshooting_page_is_still_logged() -> None:
    events = logged_events()
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \[", TROUBLESHOOTING.read_text(), re.MULTILINE)

    assert len(rows) > 50  # the scan sees the tables
    assert [name for name in rows if name not in events.names and not any(
        re.fullmatch(pattern, name) for pattern in events.patterns)] == []

def test_every_error_type_is_on_the_troubleshooting_page() -> None:
    types = error_types()

    assert {"Extension.ConfigError", "Extension.AuthError", "Extension.RuntimeError"} <= types
    assert sorted(types - documented(TROUBLESHOOTING.read_text())) == []


def test_the_event_scan_finds_names_built_with_f_strings() -> None:
    events = logged_events()

    assert any(re.fullmatch(pattern, "spool.quarantined") for pattern in events.patterns)
    assert any(re.fullmatch(pattern, "spill.s3_failed") for pattern in events.patterns)


# --- generated blocks -------------------------------------------------------------------------


def test_the_configuration_page_renders_every_variable_from_the_code() -> None:
    page = (DOCS / "configuration.md").read_text()

    rendered = docs_site.render(page)

    assert "<!-- generated: variables -->" in page
    for variable in VARIABLES:
        assert f"`{variable.name}`" in rendered
    assert "| `KAFKA_RELAY_PORT` | `4195` | port, 1 to 65,535 | extension, client |" in rendered


def test_the_authentication_page_renders_an_environment_per_mode() -> None:
    rendered = docs_site.render((DOCS / "authentication.md").read_text())

    for auth in AUTH_ENVIRONMENTS:
        assert f"KAFKA_AUTH={auth.mode}\n" in rendered
        assert "\n".join(auth.lines()) in rendered


def test_an_unknown_generated_block_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        docs_site.render("<!-- generated: nope -->")


# --- shell commands ---------------------------------------------------------------------------

#: Commands shown without the mark, and the test (or CI step) that runs each: a pattern of
#: the command, the file, and what that file must hold.
EXERCISED = [
    (r"\./build\.sh demo", "tests/e2e/test_demo.py", "./build.sh demo"),
    (r"\./build\.sh test", ".ci/run", "./build.sh test"),
    (r"\./build\.sh build\b", "tests/integration/test_build_artifacts.py", "layer_build"),
    (r"\./build\.sh sandbox --function \S+ --handler app\.handler .*--with-broker",
     "tests/e2e/test_adoption.py", "--with-broker"),
    (r"python -m devtools\.sandbox --layer ", "tests/e2e/test_sandbox.py", "devtools.sandbox"),
    (r"kafka-relay-logs --file \S+ --json", "tests/unit/test_logs_cli.py", '"--file"'),
    (r"kafka-relay-replay /tmp/kafka-relay-spool", "tests/integration/test_replay.py",
     "_replay([str(directory)"),
    (r"kafka-relay-replay --log-file ", "tests/integration/test_replay.py", '"--log-file"'),
    (r"kafka-relay-replay --from-topic ", "tests/integration/test_redrive.py", '"--from-topic"'),
]


@dataclass(frozen=True)
class Shown:
    where: str
    command: str
    marked: bool


def commands_in(path: Path) -> list[Shown]:
    """Every command in the fenced shell blocks of a page (continuation lines joined), and
    every unlabelled block that starts like a command, so none hides as plain text."""
    shown = []
    for match in FENCE.finditer(path.read_text()):
        language = match[2]
        lines = [line.strip() for line in match[3].splitlines()]
        if language not in SHELL_LANGUAGES:
            assert not (language == "" and lines and COMMAND_START.match(lines[0])), (
                f"{path.name}: a command block needs a language (sh): {lines[0]}")
            continue
        marked = bool(lines) and lines[0].startswith(NEEDS_AWS)
        joined = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
        for line in joined.splitlines():
            command = line.removeprefix("$ ").split(" # ")[0].strip()
            if command and not command.startswith("#"):
                shown.append(Shown(path.name, command, marked))
    return shown


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_every_shown_command_runs_in_the_tests_or_is_marked_as_needing_aws() -> None:
    shown = [item for page in pages() for item in commands_in(page)]
    unmarked = [item for item in shown if not item.marked]

    assert len(shown) > 20  # the scan sees the docs' commands
    not_exercised = [f"{item.where}: {item.command}" for item in unmarked
                     if not any(re.match(pattern, item.command)
                                for pattern, _file, _token in EXERCISED)]
    assert not_exercised == []


@pytest.mark.parametrize(("pattern", "file", "token"), EXERCISED)
def test_each_exercised_command_is_really_in_its_test(pattern: str, file: str,
                                                      token: str) -> None:
    assert token in (REPO / file).read_text(), f"{file} no longer runs {pattern}"


def test_a_command_that_is_neither_marked_nor_exercised_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```sh\n./build.sh publish-layer \\\n  --region eu-west-1\n```\n")

    [item] = commands_in(page)

    assert item == Shown("page.md", "./build.sh publish-layer --region eu-west-1", False)
    assert not any(re.match(pattern, item.command) for pattern, _f, _t in EXERCISED)


# --- the README -------------------------------------------------------------------------------


def test_the_readme_is_a_front_page_with_the_two_commands() -> None:
    text = README.read_text()

    assert len(text.splitlines()) <= 250
    assert "./build.sh demo" in text
    assert "./build.sh test" in text


def test_every_docs_link_in_the_readme_resolves() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README.read_text())

    assert len(links) > 10
    assert [link for link in links if not (REPO / link).is_file()] == []
