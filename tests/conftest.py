"""Shared fixtures (a real Kafka broker, unique topics, a broker behind a fault proxy, moto),
and the tiers: each test is marked after its directory, so ``-m`` and paths select alike.

unit: one module, in process. functional: several parts or processes together, local
servers (HTTP fixtures, moto), no broker. integration: a real broker. e2e: the built layer
in the local Lambda sandbox.
"""

from __future__ import annotations

import fcntl
import os
import sys
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.faultproxy import FaultProxy
from devtools.fixture_server import FixtureServer
from devtools.kafka_broker import (
    EXTERNAL_BOOTSTRAP_ENV,
    ConsumedRecord,
    KafkaBroker,
    create_topics,
    free_port,
    read_topic,
)
from devtools.moto_server import MotoServer
from layer_build.build import BuildConfig, Builder
from layer_build.manifest import FUNCTION_FILE_NAME, VIEWS_FILE_NAME, layer_file_name

TIERS = ("unit", "functional", "integration", "e2e")
#: Fixtures only the broker tiers may use: a fast tier never waits for Kafka.
BROKER_FIXTURES = frozenset({"broker", "topic", "proxied_broker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(root):
            continue  # the hook sees every collected item, also those outside tests/
        tier = item.path.relative_to(root).parts[0]
        if tier not in TIERS:
            continue
        item.add_marker(tier)
        uses = BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if tier in ("unit", "functional") and uses:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(uses))}: a test that needs the broker "
                "belongs in tests/integration"
            )


@dataclass(frozen=True)
class Broker:
    """What tests need of a broker: where to bootstrap, and topic helpers."""

    bootstrap: str

    def create_topic(self, name: str | None = None, *, partitions: int = 1) -> str:
        name = name or f"test.{uuid.uuid4().hex[:12]}"
        create_topics(self.bootstrap, [name], partitions=partitions)
        return name

    def read(
        self, topic: str, *, expected: int | None = None, timeout: float = 10.0
    ) -> list[ConsumedRecord]:
        return read_topic(self.bootstrap, topic, expected=expected, timeout=timeout)

    def read_ids(self, topic: str, ids: Collection[str], *,
                 timeout: float = 10.0) -> list[ConsumedRecord]:
        """Read until every one of ``ids`` arrived, duplicates included (at-least-once)."""
        return read_topic(self.bootstrap, topic, ids=ids, timeout=timeout)


@dataclass(frozen=True)
class Artifacts:
    layer: Path
    functions: Path


def _built_once(factory: pytest.TempPathFactory, name: str,
                make: Callable[[Builder], object]) -> Path:
    """``name`` built for x86_64 and this interpreter into the run's dist/ by ``make``, once
    per run: parallel workers share the run's temporary directory, the first builds under a
    lock (one per artifact) and the others find the file (written atomically)."""
    run_dir = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_dir = run_dir.parent  # each worker's basetemp sits in the run's
    out = run_dir / "dist"
    with open(run_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / name).is_file():
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            make(Builder(BuildConfig(out=out, arches=("x86_64",), python_versions=(version,)),
                         log=lambda _line: None))
    return out / name


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The built x86_64 layer and producer functions' zip for this interpreter: tests run the
    artifacts."""
    return Artifacts(
        layer=_built_once(tmp_path_factory, layer_file_name("x86_64"),
                          lambda builder: builder.layer("x86_64")),
        functions=_built_once(tmp_path_factory, FUNCTION_FILE_NAME, Builder.function))


@pytest.fixture(scope="session")
def views_functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built views functions' zip (with DuckDB): apart from ``artifacts``, so the tests
    that never run the views do not wait for its compression."""
    return _built_once(tmp_path_factory, VIEWS_FILE_NAME, Builder.views)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The suite's broker: $KAFKA_RELAY_TEST_BOOTSTRAP if set, else a local Tansu."""
    external = os.environ.get(EXTERNAL_BOOTSTRAP_ENV)
    if external:
        yield Broker(external)
        return
    with KafkaBroker() as local:
        yield Broker(local.bootstrap)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server for the session; ``use_moto`` empties it for each test."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def upstream() -> Iterator[FixtureServer]:
    """The producers' upstreams (feeds, Polymarket) served from fixture files on loopback."""
    with FixtureServer() as server:
        yield server


@pytest.fixture
def topic(broker: Broker) -> str:
    return broker.create_topic()


@dataclass(frozen=True)
class ProxiedBroker:
    """A dedicated broker reachable only through a fault proxy."""

    broker: Broker
    proxy: FaultProxy


@pytest.fixture(scope="session")
def proxied_broker_session() -> Iterator[ProxiedBroker]:
    """Its own broker (so cuts never disturb tests on ``broker``) advertising the proxy's port;
    one per session (per worker), each test on its own topics."""
    proxy_port = free_port()
    with (
        KafkaBroker(advertised_port=proxy_port) as local,
        FaultProxy(local.listen_address, port=proxy_port) as proxy,
    ):
        yield ProxiedBroker(Broker(local.bootstrap), proxy)


@pytest.fixture
def proxied_broker(proxied_broker_session: ProxiedBroker) -> Iterator[ProxiedBroker]:
    """The proxied broker, its faults cleared after the test whatever the test left."""
    try:
        yield proxied_broker_session
    finally:
        proxied_broker_session.proxy.reset()
