"""The init-time broker probe: open the first connection now (warm for the first invoke) and
learn early that the broker is unreachable or refuses the credentials."""

from __future__ import annotations

import threading
from collections.abc import Callable

from confluent_kafka import KafkaException

from kafka_relay.delivery.pump import Pump
from kafka_relay.protocol import BrokerState

_POLL_S = 0.02


def probe_broker(pump: Pump, timeout_s: float, *,
                 unreachable: Callable[[], str | None] = lambda: None) -> str | None:
    """The error when the broker did not answer within ``timeout_s``, else None. The metadata
    request runs on a helper thread so that ``unreachable()`` naming a transport error
    (checked every few ms) ends the wait early."""
    answer: list[str | None] = []
    done = threading.Event()

    def ask() -> None:
        try:
            pump.producer.list_topics(timeout=timeout_s)
            answer.append(None)
        except KafkaException as exc:
            answer.append(str(exc.args[0]))
        finally:
            done.set()

    threading.Thread(target=ask, name="kafka-relay-probe", daemon=True).start()
    while not done.wait(_POLL_S):
        given_up = unreachable()
        if given_up is not None:
            return given_up
    if answer[0] is None:
        pump.broker_state = BrokerState.UP
    return answer[0]
