"""After a thaw the pump makes sure of a fresh MSK IAM token before it produces: the engine's
``thawed`` asks, the pump runs the check on its own thread with its own producer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from kafka_relay.config import AwsCredentials, load_config
from kafka_relay.delivery.engine import DeliveryEngine
from kafka_relay.delivery.pump import ProducerLike
from kafka_relay.observability.log import JsonLogger
from kafka_relay.producer.credentials import MskIam
from kafka_relay.producer.msk_iam import MskIamTokenProvider
from kafka_relay.record import Record
from kafka_relay.spill.sinks import SpillChain
from tests.unit.engine_fakes import FakeProducer

REGION = "eu-west-1"


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _signer(clock: Clock) -> Any:
    calls: list[float] = []

    def sign(region: str, credentials: AwsCredentials) -> tuple[str, int]:
        calls.append(clock.now)
        return f"token-{len(calls)}", int((clock.now + 900) * 1000)

    sign.calls = calls  # type: ignore[attr-defined]
    return sign


def _log() -> tuple[JsonLogger, io.StringIO]:
    stream = io.StringIO()
    return JsonLogger(stream=stream, level="DEBUG", clock=lambda: 0.0), stream


def _events(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines() if line]


def _strategy(clock: Clock, signer: Any) -> MskIam:
    credentials = AwsCredentials("ASIAROLE", "secret", "session")
    return MskIam(MskIamTokenProvider(region=REGION, credentials=lambda: credentials,
                                      signer=signer, clock=clock))


def test_the_pump_runs_the_thaw_check_with_its_producer_before_the_next_batch(
        tmp_path: Path) -> None:
    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "fake:9092", "KAFKA_TOPIC": "t",
                          "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool"),
                          "KAFKA_RELAY_JOURNAL_DIR": str(tmp_path / "journal")})
    logger, _ = _log()
    order: list[str] = []
    producer = FakeProducer()
    original_produce = producer.produce

    def produce(topic: str, *args: Any, **kwargs: Any) -> None:
        order.append("produce")
        original_produce(topic, *args, **kwargs)

    producer.produce = produce  # type: ignore[method-assign]
    checked: list[ProducerLike] = []

    def on_thaw(p: ProducerLike) -> None:
        order.append("check")
        checked.append(p)

    engine = DeliveryEngine(config, producer_factory=lambda: producer,
                            spill=SpillChain.from_config(config, logger), logger=logger,
                            on_thaw=on_thaw)
    engine.thawed()
    engine.accept([Record(id="r1", topic="t", key=b"k", value=b"v", timestamp_ms=None,
                          request_id="req-1")])
    engine.pump.step()
    engine.pump.step()  # once per INVOKE, not on every step

    assert order == ["check", "produce"]
    assert checked == [producer]
    assert engine.gauge().counts["delivered"] == 1


def test_a_fresh_token_needs_no_wait() -> None:
    clock = Clock()
    strategy = _strategy(clock, _signer(clock))
    strategy.provider.token()
    logger, stream = _log()
    polls: list[float] = []

    strategy.thaw_check(logger)(_Poller(polls))

    assert polls == []
    assert _events(stream) == ["auth.token_fresh"]  # at DEBUG


class _Poller:
    """A producer whose poll serves librdkafka's token refresh on the ``serve_on``-th call."""

    def __init__(self, polls: list[float], *, serve_on: int = 0,
                 provider: MskIamTokenProvider | None = None) -> None:
        self.polls = polls
        self.serve_on = serve_on
        self.provider = provider

    def poll(self, timeout: float = 0) -> int:
        self.polls.append(timeout)
        if self.provider is not None and len(self.polls) == self.serve_on:
            self.provider("")  # librdkafka calls oauth_cb
        return 0


def test_after_a_long_freeze_the_check_waits_for_librdkafka_to_take_a_new_token() -> None:
    clock = Clock()
    signer = _signer(clock)
    strategy = _strategy(clock, signer)
    strategy.provider.token()
    clock.now += 3600  # frozen for an hour
    logger, stream = _log()
    polls: list[float] = []

    strategy.thaw_check(logger)(_Poller(polls, serve_on=2, provider=strategy.provider))

    assert len(polls) == 2
    assert signer.calls == [1_800_000_000.0, 1_800_003_600.0]
    assert _events(stream) == ["auth.token_refreshed"]
    assert not strategy.provider.stale()


def test_no_new_token_in_time_is_a_warning_and_a_failing_signer_never_stops_the_pump() -> None:
    clock = Clock()
    strategy = _strategy(clock, _signer(clock))
    strategy.provider.token()
    clock.now += 3600
    logger, stream = _log()

    strategy.thaw_check(logger, timeout_s=0.05)(_Poller([]))

    def broken(region: str, credentials: AwsCredentials) -> tuple[str, int]:
        raise RuntimeError("no network")

    failing = _strategy(clock, broken)
    failing.thaw_check(logger)(_Poller([], serve_on=1, provider=failing.provider))

    assert _events(stream) == ["auth.token_not_fresh", "auth.thaw_refresh_failed"]
