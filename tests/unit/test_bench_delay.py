"""Which mechanism delivers the bench's round-trip delay, and that probing for kernel netem
leaves no network namespace behind."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bench.infra import PROXY_DELAY, delay_source, probe_netem


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=False).stdout


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_probing_for_netem_answers_why_not_or_none_and_deletes_its_namespace() -> None:
    problem = probe_netem()
    assert problem is None or problem.strip()
    assert "kafka-relay-bench-" not in _namespaces()


def test_the_bench_says_the_proxy_delivers_the_delay_and_why_not_the_kernel() -> None:
    unavailable = delay_source("tc: Specified qdisc kind is unknown.")
    assert unavailable.startswith(PROXY_DELAY)
    assert "kernel netem unavailable (tc: Specified qdisc kind is unknown.)" in unavailable
    assert "not built" in delay_source(None)
