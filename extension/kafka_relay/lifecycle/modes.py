"""What each Lambda mode asks of the lifecycle: the events to register for and the Telemetry
schema. Stdlib only (``__main__`` registers with it before anything heavy is imported).

on-demand, snap-start   INVOKE + SHUTDOWN, Telemetry schema 2022-12-13
managed-instances       SHUTDOWN only (Lambda refuses INVOKE there), schema 2025-01-29

Liberal: an INVOKE registration refused as an invalid event type (a managed-instances
environment whose mode variable we did not recognise) is retried for SHUTDOWN only, and a
Telemetry subscription refused under one schema is retried under the other. The event loop
then follows what Lambda accepted (``api.events``), not what the variable said.
"""

from __future__ import annotations

from typing import Protocol

from kafka_relay.config import LambdaMode
from kafka_relay.errors import LambdaApiError
from kafka_relay.lifecycle.api import (
    MANAGED_INSTANCES_TELEMETRY_SCHEMA,
    TELEMETRY_SCHEMA,
)
from kafka_relay.lifecycle.events import INVOKE
from kafka_relay.observability.log import JsonLogger


class Registrar(Protocol):
    events: list[str]

    def subscribe_telemetry(self, uri: str, *, types: list[str], schema: str = ...) -> None: ...


def shutdown_only(events: list[str]) -> bool:
    """No INVOKE events: the background (managed-instances) event loop runs."""
    return INVOKE not in events


def telemetry_schemas(mode: LambdaMode) -> tuple[str, str]:
    """The schema to subscribe with first, and the one to try when it is refused."""
    if mode is LambdaMode.MANAGED_INSTANCES:
        return MANAGED_INSTANCES_TELEMETRY_SCHEMA, TELEMETRY_SCHEMA
    return TELEMETRY_SCHEMA, MANAGED_INSTANCES_TELEMETRY_SCHEMA


def subscribe(api: Registrar, uri: str, *, types: list[str], mode: LambdaMode,
              logger: JsonLogger) -> str:
    """Subscribe to Telemetry; the schema Lambda accepted. Raises the first refusal when
    both schemas are refused."""
    first, other = telemetry_schemas(mode)
    try:
        api.subscribe_telemetry(uri, types=types, schema=first)
        return first
    except LambdaApiError as exc:
        logger.info("telemetry.schema_refused", schema=first, retry_with=other, error=str(exc))
        try:
            api.subscribe_telemetry(uri, types=types, schema=other)
        except LambdaApiError:
            raise exc from None
        return other
