"""./build.sh demo runs with requirements-demo.txt alone: nothing on its path needs a dev tool.

Every developer venv holds the dev set, so a dev-only import on the demo's path (pytest in a
devtools module, say) passes every other test and fails only on a fresh clone. Here the
dev-only packages — the dev set's dependency closure minus the demo set's, read from the
installed metadata — are blocked in a fresh interpreter that imports the demo's modules.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
#: What ./build.sh demo imports: its build step, the demo, the sandbox it drives, the logs table.
DEMO_MODULES = ("layer_build.build", "devtools.demo", "devtools.views_demo", "devtools.sandbox",
                "devtools.sandbox.__main__", "kafka_relay.tools.logs", "kafka_relay.tools.cli")
_BLOCKER = """
import importlib, importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (dev-only)", name=name)
        return None
sys.meta_path.insert(0, Block())
for module in sys.argv[2:]:
    importlib.import_module(module)
"""


def _requirements(file: Path) -> list[Requirement]:
    found = []
    for raw in file.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line.startswith("-r "):
            found += _requirements(file.parent / line[3:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def _closure(roots: list[Requirement]) -> set[str]:
    """The distributions these requirements install (their extras included), normalised."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        extras = requirement.extras or {""}
        key_extras = {f"{name}[{extra}]" for extra in extras}
        if key_extras <= seen:
            continue
        seen |= key_extras | {name}
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(
                    dependency.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dependency)
    return {key for key in seen if "[" not in key}


def dev_only_modules() -> set[str]:
    dev_only = (_closure(_requirements(REPO / "requirements-dev.txt"))
                - _closure(_requirements(REPO / "requirements-demo.txt")))
    return {module for module, dists in metadata.packages_distributions().items()
            if any(re.sub(r"[-_.]+", "-", d).lower() in dev_only for d in dists)}


def test_the_dev_only_set_holds_the_test_and_lint_tools() -> None:
    assert {"pytest", "hypothesis", "mypy", "ruff", "importlinter", "trustme"} <= (
        dev_only_modules())
    assert not {"boto3", "confluent_kafka", "moto", "awslambdaric"} & dev_only_modules()


def test_the_demo_imports_nothing_dev_only() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKER, ",".join(sorted(dev_only_modules())), *DEMO_MODULES],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'extension'}", "PATH": "/usr/bin:/bin"})

    assert result.returncode == 0, result.stderr[-2000:]
