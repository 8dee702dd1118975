"""Summarise a kafka-relay function's logs: one row per invocation, then the relay's events.

    python -m kafka_relay.logs --log-group /aws/lambda/rss-producer --start 2h
    python -m kafka_relay.logs --file sandbox.log --json
    python -m kafka_relay.logs --log-group /aws/lambda/rss-producer --follow
    python -m kafka_relay.logs --log-group ... --spilled-out spilled.log
    python -m kafka_relay.replay --log-file spilled.log        # re-produce what was spilled

Reads CloudWatch Logs (boto3 ``filter_log_events``) or a local sandbox log
file. Rows join the platform's START/END/REPORT lines with the relay's
``invocation.done`` line of the same request id; events are the relay's
warnings, errors and shutdown summaries. ``KAFKA_RELAY_SPILL`` lines can be
written out for the replay tool.

The parsing layer (``LogParser``, ``CloudWatchTail``, ``FileTail``) is pure
apart from the reads; boto3 is imported only for ``--log-group`` (Lambda's
runtime has it, the layer does not vendor it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from kafka_relay.cli import run_cli
from kafka_relay.errors import RelayError
from kafka_relay.spill.codec import SPILL_EVENT, parse_spill_lines

LOGGER_NAME = "kafka-relay"
SPILL_FILTER_PATTERN = f'"{SPILL_EVENT}"'
RELAY_COUNTS = ("accepted", "delivered", "dead_lettered", "spilled", "pending", "flush_ms")
# INFO lines worth showing next to the warnings and errors.
_NOTABLE_INFO = frozenset({"shutdown.summary", "spool.restored"})
_DEFAULT_LOOKBACK = "1h"
# CloudWatch ingests events a few seconds late: each poll looks back this far (ids dedupe).
_LATE_MS = 10_000
_PLATFORM = re.compile(r"(?:^|\s)(START|END|REPORT) RequestId: ([\w-]+)")
# Longer names first, so "Billed Duration" is never read as "Duration".
_REPORT_FIELD = re.compile(
    r"(Billed Duration|Init Duration|Max Memory Used|Memory Size|Duration|Status): ([\w.]+)"
)
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class LogsError(RelayError):
    """A log source could not be read or an argument is malformed; the message says the fix."""


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    """One line of output; ``timestamp_ms`` is CloudWatch's event time when known."""

    message: str
    timestamp_ms: int | None = None


def json_in_line(line: str) -> dict[str, Any] | None:
    """The JSON object a line carries, after any prefix (timestamps, stream names)."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(line, start)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def events_named(lines: Iterable[str], name: str) -> list[dict[str, Any]]:
    """The JSON log events called ``name`` (``"event": name``) among ``lines``, in order."""
    found = []
    for line in lines:
        event = json_in_line(line) if name in line else None  # skip parsing most lines
        if event is not None and event.get("event") == name:
            found.append(event)
    return found


def parse_time(text: str, *, now_ms: int) -> int:
    """Epoch ms (``1767225600000``), ISO 8601 (UTC unless zoned), or an age (``90m``, ``2h``)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    relative = _RELATIVE.match(text)
    if relative:
        return now_ms - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise LogsError(
            f"{text!r} is not a time: use epoch milliseconds, ISO 8601 such as "
            "2026-01-02T03:04:05Z, or an age such as 30m, 2h, 1d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def aws_errors() -> tuple[type[Exception], ...]:
    """What boto3 raises for AWS-side failures (imported only once AWS is used)."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - see module doc

    return (BotoCoreError, ClientError)


class CloudWatchTail:
    """A log group's events between ``start_ms`` and ``end_ms``; each ``poll`` returns new ones."""

    def __init__(
        self,
        client: Any,
        group: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        filter_pattern: str | None = None,
        page_size: int | None = None,
    ) -> None:
        self._client = client
        self.group = group
        self._start_ms = start_ms
        self._end_ms = end_ms
        self._pattern = filter_pattern
        self._page_size = page_size
        self._seen: dict[str, int] = {}  # event id -> timestamp, for events inside the lookback

    def poll(self) -> list[LogLine]:
        request: dict[str, Any] = {"logGroupName": self.group}
        if self._start_ms is not None:
            request["startTime"] = self._start_ms
        if self._end_ms is not None:
            request["endTime"] = self._end_ms
        if self._pattern:
            request["filterPattern"] = self._pattern
        if self._page_size:
            request["limit"] = self._page_size
        fresh: list[dict[str, Any]] = []
        try:
            while True:
                page = self._client.filter_log_events(**request)
                fresh += [e for e in page.get("events", []) if e["eventId"] not in self._seen]
                if not page.get("nextToken"):
                    break
                request["nextToken"] = page["nextToken"]
        except aws_errors() as exc:
            raise LogsError(
                f"reading log group {self.group!r} failed ({exc}); check the name, the region "
                "(--region or AWS_REGION) and that your credentials allow logs:FilterLogEvents"
            ) from exc
        fresh.sort(key=lambda e: int(e["timestamp"]))
        for event in fresh:
            self._seen[event["eventId"]] = int(event["timestamp"])
        if self._seen:
            self._start_ms = max(self._seen.values()) - _LATE_MS
            self._seen = {k: ts for k, ts in self._seen.items() if ts >= self._start_ms}
        return [
            LogLine(line, int(event["timestamp"]))
            for event in fresh
            for line in str(event["message"]).splitlines()
        ]


class FileTail:
    """A local log file; each ``poll`` returns the lines appended since the last one."""

    def __init__(self, path: Path, *, follow: bool = False) -> None:
        if not path.is_file():
            raise LogsError(f"no log file at {path}: pass the sandbox's log stream file")
        self.path = path
        self._follow = follow
        self._offset = 0
        self._partial = ""

    def poll(self) -> list[LogLine]:
        with open(self.path, encoding="utf-8", errors="replace") as stream:
            stream.seek(self._offset)
            text = self._partial + stream.read()
            self._offset = stream.tell()
        lines = text.split("\n")
        # While following, a last line without its newline is still being written.
        self._partial = lines.pop() if self._follow else ""
        return [LogLine(line.rstrip("\r")) for line in lines if line.strip()]


# -- parsing ---------------------------------------------------------------------------------


@dataclass
class Invocation:
    request_id: str
    start_ms: int | None = None
    duration_ms: float | None = None
    billed_ms: float | None = None
    init_ms: float | None = None
    memory_mb: int | None = None
    max_memory_mb: int | None = None
    status: str | None = None
    ended: bool = False
    reported: bool = False
    relay: dict[str, float] | None = None

    @property
    def cold_start(self) -> bool:
        return self.init_ms is not None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cold_start": self.cold_start}


@dataclass(frozen=True)
class RelayEvent:
    ts_ms: int | None
    level: str
    event: str
    request_id: str | None
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Item = Invocation | RelayEvent


class LogParser:
    """Feed lines in order; ``feed`` returns what just became complete (for ``--follow``)."""

    def __init__(self) -> None:
        self._invocations: dict[str, Invocation] = {}
        self.events: list[RelayEvent] = []
        self.spill_lines: list[str] = []
        self.emf_lines = 0

    @property
    def invocations(self) -> list[Invocation]:
        return list(self._invocations.values())

    def feed_all(self, lines: Iterable[LogLine]) -> list[Item]:
        return [item for line in lines for item in self.feed(line)]

    def feed(self, line: LogLine) -> list[Item]:
        platform = _PLATFORM.search(line.message)
        if platform and "{" not in line.message[: platform.start()]:
            return self._platform(platform, line)
        entry = json_in_line(line.message)
        if entry is None:
            return []
        if entry.get("event") == SPILL_EVENT:
            self.spill_lines.append(json.dumps(entry, separators=(",", ":")))
            return []
        if "_aws" in entry:
            self.emf_lines += 1
            return []
        if entry.get("logger") != LOGGER_NAME:
            return []  # the function's own JSON output
        return self._relay(entry, line)

    def _invocation(self, request_id: str) -> Invocation:
        if request_id not in self._invocations:
            self._invocations[request_id] = Invocation(request_id)
        return self._invocations[request_id]

    def _platform(self, match: re.Match[str], line: LogLine) -> list[Item]:
        kind, request_id = match.group(1), match.group(2)
        invocation = self._invocation(request_id)
        if kind == "START":
            invocation.start_ms = line.timestamp_ms
            return []
        if kind == "END":
            invocation.ended = True
            return []
        fields = dict(_REPORT_FIELD.findall(line.message[match.end():]))
        invocation.duration_ms = _number(fields.get("Duration"))
        invocation.billed_ms = _number(fields.get("Billed Duration"))
        invocation.init_ms = _number(fields.get("Init Duration"))
        memory = _number(fields.get("Memory Size"))
        max_memory = _number(fields.get("Max Memory Used"))
        invocation.memory_mb = None if memory is None else int(memory)
        invocation.max_memory_mb = None if max_memory is None else int(max_memory)
        invocation.status = fields.get("Status")
        invocation.reported = True
        return [invocation]

    def _relay(self, entry: dict[str, Any], line: LogLine) -> list[Item]:
        name, level = str(entry.get("event", "")), str(entry.get("level", ""))
        request_id = entry.get("request_id")
        if name == "invocation.done":
            # The one after the shutdown summary has no request id: the summary covers it.
            if request_id:
                self._invocation(str(request_id)).relay = {
                    k: entry[k] for k in RELAY_COUNTS if isinstance(entry.get(k), int | float)
                }
            return []
        if level not in ("WARNING", "ERROR") and name not in _NOTABLE_INFO:
            return []
        ts = entry.get("ts")
        event = RelayEvent(
            ts_ms=int(ts * 1000) if isinstance(ts, int | float) else line.timestamp_ms,
            level=level,
            event=name,
            request_id=str(request_id) if request_id else None,
            fields={k: v for k, v in entry.items()
                    if k not in ("ts", "level", "logger", "event", "request_id")},
        )
        self.events.append(event)
        return [event]

    def summary(self) -> dict[str, Any]:
        invocations = self.invocations
        totals: dict[str, Any] = {
            "invocations": len(invocations),
            "cold_starts": sum(1 for i in invocations if i.cold_start),
        }
        for name in RELAY_COUNTS[:4]:
            totals[name] = sum(int(i.relay.get(name, 0)) for i in invocations if i.relay)
        return {
            "invocations": [i.as_dict() for i in invocations],
            "events": [e.as_dict() for e in self.events],
            "totals": totals,
            "spill": {"lines": len(self.spill_lines),
                      "records": len(parse_spill_lines(self.spill_lines).records),
                      "written_to": None},
        }


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


# -- rendering -------------------------------------------------------------------------------

_HEADER = (f"{'REQUEST ID':<36}  {'DURATION':>10} {'BILLED':>7} {'INIT':>9} {'MEM MB':>9}  "
           f"{'ACC':>5} {'DLV':>5} {'DLQ':>4} {'SPILL':>5} {'PEND':>5} {'FLUSH MS':>8}")


def format_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _cell(value: float | None, unit: str = "", *, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def format_row(invocation: Invocation) -> str:
    relay = invocation.relay or {}
    memory = (f"{_cell(invocation.max_memory_mb)}/{_cell(invocation.memory_mb)}"
              if invocation.reported else "-")
    cells = [
        f"{invocation.request_id:<36} ",
        f"{_cell(invocation.duration_ms, ' ms', digits=2):>10}",
        f"{_cell(invocation.billed_ms, ' ms'):>7}",
        f"{_cell(invocation.init_ms, ' ms', digits=1):>9}",
        f"{memory:>9} ",
        *(f"{_cell(relay.get(name)):>{width}}" for name, width in
          (("accepted", 5), ("delivered", 5), ("dead_lettered", 4), ("spilled", 5),
           ("pending", 5))),
        f"{_cell(relay.get('flush_ms'), digits=1):>8}",
    ]
    if invocation.status:
        cells.append(f" status={invocation.status}")
    elif not invocation.reported:
        cells.append(" (no REPORT yet)")
    return " ".join(cells)


def format_event(event: RelayEvent) -> str:
    details = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                       for k, v in event.fields.items())
    request = f" request_id={event.request_id}" if event.request_id else ""
    return f"{format_time(event.ts_ms)} {event.level:<7} {event.event}{request} {details}".rstrip()


def render_text(summary: Mapping[str, Any], parser: LogParser, out: TextIO) -> None:
    out.write(_HEADER + "\n")
    for invocation in parser.invocations:
        out.write(format_row(invocation) + "\n")
    out.write(f"\nrelay events ({len(parser.events)}):\n")
    for event in parser.events:
        out.write("  " + format_event(event) + "\n")
    totals, spill = summary["totals"], summary["spill"]
    out.write(
        f"\n{totals['invocations']} invocations ({totals['cold_starts']} cold); accepted "
        f"{totals['accepted']}, delivered {totals['delivered']}, dead-lettered "
        f"{totals['dead_lettered']}, spilled {totals['spilled']}; {spill['records']} spilled "
        f"records in {spill['lines']} {SPILL_EVENT} log lines\n"
    )


# -- command line ----------------------------------------------------------------------------


def _default_logs_client(region: str | None) -> Any:
    import boto3  # noqa: PLC0415 - see module doc

    return boto3.client("logs", region_name=region)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kafka_relay.logs",
        description="Summarise a kafka-relay function's invocations and relay events.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--log-group", help="CloudWatch log group, e.g. /aws/lambda/my-function")
    source.add_argument("--file", type=Path, help="a local sandbox log stream file")
    parser.add_argument("--start", help=f"from (epoch ms, ISO 8601, or an age like 30m; "
                                        f"default {_DEFAULT_LOOKBACK} for --log-group)")
    parser.add_argument("--end", help="until (same forms as --start; default now)")
    parser.add_argument("--region", help="AWS region of the log group (default: AWS_REGION)")
    parser.add_argument("--follow", action="store_true",
                        help="keep polling for new lines until Ctrl-C (rows print at REPORT)")
    parser.add_argument("--follow-for", type=float, metavar="SECONDS",
                        help="with --follow: stop after this many seconds")
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="with --follow: seconds between polls (default 2)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (with --follow: one JSON object per line)")
    parser.add_argument("--spilled-out", type=Path, metavar="FILE",
                        help=f"write the {SPILL_EVENT} lines found to FILE, for "
                             "python -m kafka_relay.replay --log-file FILE")
    return parser


def main(
    argv: list[str],
    *,
    env: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    logs_client_factory: Callable[[str | None], Any] = _default_logs_client,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.file and (args.start or args.end):
        parser.error("--start/--end select CloudWatch events; a --file is read whole")
    if args.follow and args.end:
        parser.error("--end and --follow do not mix")
    if args.follow_for is not None and not args.follow:
        parser.error("--follow-for needs --follow")
    try:
        if args.file:
            tail: CloudWatchTail | FileTail = FileTail(args.file, follow=args.follow)
        else:
            now = wall_ms()
            region = args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
            tail = CloudWatchTail(
                logs_client_factory(region), args.log_group,
                start_ms=parse_time(args.start or _DEFAULT_LOOKBACK, now_ms=now),
                end_ms=parse_time(args.end, now_ms=now) if args.end else None,
            )
        log = LogParser()
        if args.follow:
            _follow(tail, log, args, stdout, sleep=sleep, monotonic=monotonic)
        else:
            log.feed_all(tail.poll())
        summary = log.summary()
        if args.spilled_out:
            args.spilled_out.write_text("".join(f"{line}\n" for line in log.spill_lines),
                                        encoding="utf-8")
            summary["spill"]["written_to"] = str(args.spilled_out)
    except BrokenPipeError:
        raise  # a reader such as `| head` left: run_cli exits quietly
    except (LogsError, OSError) as exc:
        stderr.write(f"error: {exc}\n")
        return 2
    if args.follow:
        if args.spilled_out:
            stderr.write(f"{summary['spill']['lines']} {SPILL_EVENT} lines written to "
                         f"{args.spilled_out}\n")
    elif args.json:
        json.dump(summary, stdout, indent=2)
        stdout.write("\n")
    else:
        render_text(summary, log, stdout)
        if args.spilled_out:
            stdout.write(f"{SPILL_EVENT} lines written to {args.spilled_out}; replay them with "
                         f"python -m kafka_relay.replay --log-file {args.spilled_out}\n")
    return 0


def _follow(
    tail: CloudWatchTail | FileTail,
    log: LogParser,
    args: argparse.Namespace,
    out: TextIO,
    *,
    sleep: Callable[[float], None],
    monotonic: Callable[[], float],
) -> None:
    """Print rows (at their REPORT) and events as they arrive, until Ctrl-C or --follow-for."""
    deadline = None if args.follow_for is None else monotonic() + args.follow_for
    if not args.json:
        out.write(_HEADER + "\n")
    try:
        while True:
            for item in log.feed_all(tail.poll()):
                if args.json:
                    kind = "invocation" if isinstance(item, Invocation) else "event"
                    out.write(json.dumps({"type": kind, **item.as_dict()}) + "\n")
                else:
                    out.write((format_row(item) if isinstance(item, Invocation)
                               else "  " + format_event(item)) + "\n")
            out.flush()
            if deadline is not None and monotonic() >= deadline:
                return
            sleep(args.interval)
    except KeyboardInterrupt:
        return  # Ctrl-C is how following ends


def cli() -> int:
    """``kafka-relay-logs`` / ``python -m kafka_relay.logs``: no tracebacks for user errors."""
    return run_cli(lambda: main(sys.argv[1:], env=os.environ, stdout=sys.stdout,
                                stderr=sys.stderr), extra="logs")


if __name__ == "__main__":
    sys.exit(cli())
