"""The handoff wire protocol, shared by ``kafka_relay.client`` and the extension. Stdlib only.

Everything both sides must agree on lives here and nowhere else: the default
port, routes, header names, media types, the outcome and broker-state names,
the Kafka headers the relay adds, and the one ``RelayError`` hierarchy.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

DEFAULT_PORT = 4195

# -- environment variables both sides read --------------------------------------------
PORT_ENV = "KAFKA_RELAY_PORT"
TOKEN_ENV = "KAFKA_RELAY_TOKEN"
SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"  # the token when KAFKA_RELAY_TOKEN is unset
# SnapStart environments have no AWS_SESSION_TOKEN (credentials come from the container
# endpoint): both sides fall back to the endpoint's authorization token, also set everywhere.
CONTAINER_TOKEN_ENV = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
TOKEN_SOURCES = (TOKEN_ENV, SESSION_TOKEN_ENV, CONTAINER_TOKEN_ENV)  # first non-empty wins
FALLBACK_ENV = "KAFKA_RELAY_FALLBACK"  # "direct": produce in-process when no extension answers
FALLBACK_DIRECT = "direct"


def handoff_token(env: Mapping[str, str]) -> str | None:
    """The handoff token both the client and the extension resolve from the same environment:
    the first non-empty of ``TOKEN_SOURCES`` (surrounding spaces dropped), or None."""
    for name in TOKEN_SOURCES:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


# -- routes ---------------------------------------------------------------------------
RECORDS_PATH = "/v1/records"
FLUSH_PATH = "/v1/flush"
INVOCATION_END_PATH = "/v1/invocation/end"
STATUS_PATH = "/v1/status"

# -- request headers ------------------------------------------------------------------
TOKEN_HEADER = "X-Kafka-Relay-Token"
REQUEST_ID_HEADER = "X-Kafka-Relay-Request-Id"
# One key per logical request: a retried POST with the same key gets the first answer
# (same ids) instead of being accepted twice.
IDEMPOTENCY_KEY_HEADER = "X-Kafka-Relay-Idempotency-Key"

# -- query parameters -----------------------------------------------------------------
WAIT_PARAM = "wait"
WAIT_DELIVERED = "delivered"
TIMEOUT_PARAM = "timeout_ms"

# -- response headers -----------------------------------------------------------------
RETRY_AFTER_HEADER = "Retry-After"  # on 429/503, seconds (the body also has retry_after_ms)

# -- media types ----------------------------------------------------------------------
JSON_TYPE = "application/json"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# -- Kafka headers the relay adds to every record (and to dead-lettered ones) ---------
RELAY_HEADER_PREFIX = "x-relay-"
ID_HEADER = "x-relay-id"
ERROR_HEADER = "x-relay-error"
ORIGINAL_TOPIC_HEADER = "x-relay-original-topic"
ATTEMPTS_HEADER = "x-relay-attempts"
REQUEST_ID_KAFKA_HEADER = "x-relay-request-id"
FIRST_FAILED_HEADER = "x-relay-first-failed-ms"


class Outcome(str, Enum):
    """Where a record is, as the API reports it."""

    DELIVERED = "delivered"  # on its topic
    DEAD_LETTERED = "dead_lettered"  # on the DLQ, with the x-relay-* headers
    SPILLED = "spilled"  # in S3, the /tmp spool or KAFKA_RELAY_SPILL log lines
    PENDING = "pending"  # still owned by the extension (not settled within the wait)
    FAILED = "failed"  # only the direct fallback: not produced, the caller still owns it

    @property
    def settled(self) -> bool:
        return self in (Outcome.DELIVERED, Outcome.DEAD_LETTERED, Outcome.SPILLED)


class BrokerState(str, Enum):
    UNKNOWN = "unknown"  # nothing heard yet
    UP = "up"  # the last delivery succeeded
    DEGRADED = "degraded"  # transient errors: records wait and are retried
    DOWN = "down"  # flushes fail: invocations stop waiting for the broker


# -- errors ---------------------------------------------------------------------------


class RelayError(Exception):
    """Base of every kafka-relay error, on both sides of the handoff.

    ``lambda_error_type`` is what the Extensions API receives in
    ``Lambda-Extension-Function-Error-Type`` on init/exit errors.
    """

    lambda_error_type = "Extension.Error"


class RelayUnavailable(RelayError):
    """No kafka-relay extension is listening (layer not attached, or it failed to start)."""


class RecordRejected(RelayError):
    """The extension refused the request; nothing in it was accepted. ``reasons`` says why."""

    def __init__(self, message: str, reasons: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.reasons = reasons


class RelayBusy(RelayError):
    """The extension's buffer stayed full (429) or it is shutting down (503); nothing accepted."""


class RelayShuttingDown(RelayBusy):
    """The extension is shutting down (503) and accepts no more records; nothing accepted."""
