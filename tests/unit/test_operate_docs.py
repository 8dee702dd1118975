"""The operator pages stay true to the code: the metric table is generated from the metric
definitions, and every event a page names is one the extension logs."""

from __future__ import annotations

import re
from pathlib import Path

from kafka_relay.tools.metrics_doc import metric_table

REPO = Path(__file__).resolve().parents[2]
OPERATE = REPO / "docs" / "operate"
RUNTIME = REPO / "extension" / "kafka_relay"
# A quoted or backticked dotted lower-case name: how the pages name events.
_EVENT = re.compile(r"[\"`]([a-z]+(?:_[a-z]+)*\.[a-z0-9]+(?:_[a-z]+)*)[\"`]")
_NOT_EVENTS = {"logs.md", "replay.md", "redrive.md", "runbook.md", "metrics.md",
               "kafka_relay.client", "metrics.py"}


def _logged_events() -> set[str]:
    sources = "\n".join(path.read_text(encoding="utf-8") for path in RUNTIME.rglob("*.py")
                        if "tools" not in path.relative_to(RUNTIME).parts)
    names = set(re.findall(r"\"([a-z_]+\.[a-z_]+)\"", sources))
    # The spill sinks log spill.<kind> and spill.<kind>_failed from their kind's value.
    names |= {f"spill.{kind}{suffix}" for kind in ("s3", "log", "spool")
              for suffix in ("", "_failed")}
    return names


def test_the_metrics_page_carries_the_generated_table() -> None:
    assert metric_table() in (OPERATE / "metrics.md").read_text(encoding="utf-8")


def test_every_event_the_pages_name_is_one_the_extension_logs() -> None:
    named = {name for page in OPERATE.glob("*.md")
             for name in _EVENT.findall(page.read_text(encoding="utf-8"))} - _NOT_EVENTS
    assert named, "the pages name events"
    assert sorted(named - _logged_events()) == []
