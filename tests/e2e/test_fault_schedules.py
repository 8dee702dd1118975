"""Seeded fault schedules (devtools/fault_schedule.py) on the built layer in the sandbox, the
real broker behind the fault proxy, the default configuration: every record answered 202
arrives (or is spilled) byte for byte, and copies only ever share their x-relay-id.

A few short schedules run by default; ``./build.sh faults`` runs FAULT_SCHEDULES of them
(default 200). A failing seed replays exactly: FAULT_SEED=<n>."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devtools.fault_schedule import Runner, check, read_all, schedule, small_disk
from devtools.sandbox import Sandbox
from tests.conftest import Artifacts, ProxiedBroker

FUNCTION = Path(__file__).resolve().parents[1] / "fixtures" / "any_function"
DEFAULT_SEEDS = [int(s) for s in os.environ.get("FAULT_SEED", "11,12,13").split(",")]
MANY = int(os.environ.get("FAULT_SCHEDULES", "200"))


@pytest.fixture
def journal_disk(tmp_path: Path) -> Iterator[Path | None]:
    with small_disk(tmp_path / "journal-disk") as disk:
        yield disk


def _run(artifacts: Artifacts, proxied: ProxiedBroker, disk: Path | None, seed: int,
         steps: int) -> None:
    broker, proxy = proxied.broker, proxied.proxy
    topic = broker.create_topic()

    def sandbox(env: Mapping[str, str]) -> Sandbox:
        return Sandbox(layers=[artifacts.layer], function=FUNCTION,
                       handler="any_producer.handler_relaying_event_records",
                       env={"KAFKA_BOOTSTRAP_SERVERS": proxy.address, "KAFKA_TOPIC": topic,
                            **env},
                       function_name="fault-schedule", timeout_s=10.0)

    plan = schedule(seed, steps=steps)
    run = Runner(sandbox, proxy, disk).run(seed, plan)
    verdict = check(run, read_all(broker.bootstrap, topic))
    replay = f"replay: FAULT_SEED={seed} (steps {[s.kind for s in plan]})"
    assert run.rejected == [], f"valid records were refused: {run.rejected[:1]}; {replay}"
    assert verdict.sent > 0, replay
    assert verdict.lost == [], f"{len(verdict.lost)} of {verdict.sent} lost; {replay}"
    assert verdict.altered == [], f"{len(verdict.altered)} changed on the way; {replay}"
    assert verdict.duplicated_under_new_ids == [], replay


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_a_short_fault_schedule_loses_and_changes_nothing(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, journal_disk: Path | None, seed: int
) -> None:
    _run(artifacts, proxied_broker, journal_disk, seed, steps=6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1000, 1000 + MANY))
def test_many_fault_schedules_lose_and_change_nothing(
    artifacts: Artifacts, proxied_broker: ProxiedBroker, journal_disk: Path | None, seed: int
) -> None:
    _run(artifacts, proxied_broker, journal_disk, seed, steps=12)
