"""Run by the sandbox's interpreter: its version and where the Lambda runtime's packages live.

Lambda's Python runtime offers the function the standard library,
``awslambdaric`` and ``boto3`` (with their dependencies) — nothing else
unless the function zip or a layer brings it. The sandbox links exactly
these distributions into a private runtime directory, so code that works
here does not lean on whatever else the test virtualenv holds.

Prints JSON ``{"version": "3.11", "paths": [top-level files and packages]}``.
Stdlib only: it runs as a plain script under any interpreter.
"""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution

RUNTIME_DISTRIBUTIONS = ("awslambdaric", "boto3")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _marker_allows(requirement: str) -> bool:
    """Skip extras; evaluate other markers when ``packaging`` is around, else keep them."""
    _, _, marker = requirement.partition(";")
    if not marker.strip():
        return True
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker  # noqa: PLC0415 - optional

        return bool(Marker(marker.strip()).evaluate())
    except ImportError:
        return True


def runtime_paths(roots: tuple[str, ...] = RUNTIME_DISTRIBUTIONS) -> list[str]:
    seen: set[str] = set()
    paths: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if top not in ("..", "__pycache__"):
                paths.add(str(dist.locate_file(top)))
        for requirement in dist.requires or []:
            match = _NAME.match(requirement)
            if match and _marker_allows(requirement):
                todo.append(match.group(1))
    return sorted(paths)


if __name__ == "__main__":
    json.dump({"version": f"{sys.version_info[0]}.{sys.version_info[1]}",
               "paths": runtime_paths()}, sys.stdout)
