"""Helpers for the tests that hold every shown function environment to load_config."""

from __future__ import annotations

import re
from collections.abc import Mapping

from kafka_relay.config import Config, load_config

#: What Lambda adds to a function's environment that the extension reads.
LAMBDA_ADDS = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE",
               "AWS_SECRET_ACCESS_KEY": "example-secret", "AWS_SESSION_TOKEN": "example-token",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256"}
_MODE_HEADING = re.compile(r"^\s*#?\s*(msk-iam|scram|plain|none): ")
_ASSIGNMENT = re.compile(r"^\s*(?:# )?([A-Z][A-Z0-9_]*)=(\S+)\s*$")  # "#  NAME=" is prose


def in_lambda(env: Mapping[str, str]) -> Config:
    """``env`` as the extension would resolve it inside Lambda."""
    return load_config({**LAMBDA_ADDS, **env})


def environments_in(text: str) -> dict[str, dict[str, str]]:
    """The ``NAME=value`` lines under each ``<mode>: ...`` heading (``#`` comments allowed)."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        heading = _MODE_HEADING.match(line)
        if heading:
            current = found.setdefault(heading[1], {})
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment and current is not None:
            current[assignment[1]] = assignment[2]
        elif not line.strip() or not line.lstrip().startswith("#"):
            current = None  # a blank or other line ends the block
    return found
