"""Typed Extensions API events, parsed liberally.

Lambda may add fields or shutdown reasons at any time: unknown ones are reported
back as notes (the loop logs them) and otherwise ignored; a missing or malformed
deadline becomes ``None`` and the loop substitutes its own budget.
"""

from typing import Any, NamedTuple

from kafka_relay.aws_lambda import INVOKE, SHUTDOWN

SHUTDOWN_REASONS = frozenset({"spindown", "timeout", "failure"})

_INVOKE_FIELDS = frozenset({"eventType", "requestId", "deadlineMs", "invokedFunctionArn",
                            "tracing"})
_SHUTDOWN_FIELDS = frozenset({"eventType", "shutdownReason", "deadlineMs"})


class InvokeEvent(NamedTuple):
    request_id: str
    deadline_ms: int | None  # epoch ms; None when Lambda sent none we could read
    function_arn: str = ""


class ShutdownEvent(NamedTuple):
    reason: str  # spindown | timeout | failure, or what Lambda sent, or our own (next_failed)
    deadline_ms: int | None


class UnknownEvent(NamedTuple):
    event_type: str


Event = InvokeEvent | ShutdownEvent | UnknownEvent


class Parsed(NamedTuple):
    event: Event
    notes: tuple[str, ...] = ()  # what was unexpected but tolerated


def parse_event(data: object) -> Parsed:
    """The typed event in an ``event/next`` answer; never raises."""
    if not isinstance(data, dict):
        return Parsed(UnknownEvent(type(data).__name__), ("event is not a JSON object",))
    kind = data.get("eventType")
    notes: list[str] = []
    if kind == INVOKE:
        _unknown_fields(data, _INVOKE_FIELDS, notes)
        request_id = data.get("requestId")
        if not isinstance(request_id, str) or not request_id:
            notes.append(f"requestId {request_id!r} is not a non-empty string")
            request_id = ""
        arn = data.get("invokedFunctionArn")
        return Parsed(InvokeEvent(request_id, _deadline(data, notes),
                                  arn if isinstance(arn, str) else ""), tuple(notes))
    if kind == SHUTDOWN:
        _unknown_fields(data, _SHUTDOWN_FIELDS, notes)
        reason = data.get("shutdownReason")
        if not isinstance(reason, str) or not reason:
            notes.append(f"shutdownReason {reason!r} is missing")
            reason = "unknown"
        elif reason.lower() not in SHUTDOWN_REASONS:
            notes.append(f"shutdownReason {reason!r} is not one of {sorted(SHUTDOWN_REASONS)}")
        return Parsed(ShutdownEvent(reason.lower(), _deadline(data, notes)), tuple(notes))
    return Parsed(UnknownEvent(str(kind)))


def _unknown_fields(data: dict[str, Any], known: frozenset[str], notes: list[str]) -> None:
    unknown = data.keys() - known
    if unknown:
        notes.append(f"unknown field(s) {sorted(unknown)}")


def _deadline(data: dict[str, Any], notes: list[str]) -> int | None:
    raw = data.get("deadlineMs")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
        notes.append(f"deadlineMs {raw!r} is not a positive number")
        return None
    try:
        return int(raw)
    except (OverflowError, ValueError):  # inf / nan
        notes.append(f"deadlineMs {raw!r} is not a finite number")
        return None
