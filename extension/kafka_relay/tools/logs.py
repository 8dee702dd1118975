"""Summarise a kafka-relay function's logs: one row per invocation, the relay's events, where
the spilled records are and the command that replays them.

    kafka-relay-logs --log-group /aws/lambda/rss-producer --since 2h
    kafka-relay-logs --file sandbox.log --json
    kafka-relay-logs --log-group /aws/lambda/rss-producer --request-id 3f1c...
    kafka-relay-logs --log-group /aws/lambda/rss-producer --follow --level INFO
    kafka-relay-logs --log-group ... --spilled-out spilled.log
    kafka-relay-replay --log-file spilled.log        # re-produce what was spilled

(``python -m kafka_relay.tools.logs`` without installing the scripts.) Reads
CloudWatch Logs (boto3 ``filter_log_events``) or a local sandbox log file; the
rows and their math are ``kafka_relay.tools.table``. boto3 is imported only for
``--log-group`` (Lambda's runtime has it, the layer does not vendor it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from kafka_relay.errors import RelayError
from kafka_relay.spill.codec import SPILL_EVENT
from kafka_relay.tools.cli import run_cli
from kafka_relay.tools.table import (
    HEADER,
    LEVELS,
    Invocation,
    LogLine,
    LogParser,
    View,
    format_event,
    format_row,
    render_text,
    summarise,
)

SPILL_FILTER_PATTERN = f'"{SPILL_EVENT}"'
_DEFAULT_LOOKBACK = "1h"
# CloudWatch ingests events a few seconds late: each poll looks back this far (ids dedupe).
_LATE_MS = 10_000
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class LogsError(RelayError):
    """A log source could not be read or an argument is malformed; the message says the fix."""


# -- reading --------------------------------------------------------------------------------


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


# -- command line ----------------------------------------------------------------------------


def _default_logs_client(region: str | None) -> Any:
    import boto3  # noqa: PLC0415 - see module doc

    return boto3.client("logs", region_name=region)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafka-relay-logs",
        description="Summarise a kafka-relay function's invocations and relay events: what "
                    "each invocation handed over and where those records went.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--log-group", help="CloudWatch log group, e.g. /aws/lambda/my-function")
    source.add_argument("--file", type=Path, help="a local sandbox log stream file")
    parser.add_argument("--since", "--start", dest="start",
                        help=f"from (epoch ms, ISO 8601, or an age like 30m; default "
                             f"{_DEFAULT_LOOKBACK} for --log-group)")
    parser.add_argument("--until", "--end", dest="end",
                        help="until (same forms as --since; default now)")
    parser.add_argument("--level", type=str.upper, choices=list(LEVELS), default="WARNING",
                        help="the least level of the events shown (default WARNING, with the "
                             "shutdown summaries and restores; DEBUG shows each record's place)")
    parser.add_argument("--request-id", help="show only this invocation's row and events")
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
                             "kafka-relay-replay --log-file FILE")
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
    if args.follow and args.end:
        parser.error("--until and --follow do not mix")
    if args.follow_for is not None and not args.follow:
        parser.error("--follow-for needs --follow")
    try:
        now = wall_ms()
        since = parse_time(args.start, now_ms=now) if args.start else None
        until = parse_time(args.end, now_ms=now) if args.end else None
        if args.file:
            tail: CloudWatchTail | FileTail = FileTail(args.file, follow=args.follow)
        else:
            region = args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
            tail = CloudWatchTail(
                logs_client_factory(region), args.log_group,
                start_ms=since if since is not None else parse_time(_DEFAULT_LOOKBACK,
                                                                    now_ms=now),
                end_ms=until,
            )
        view = View(level=args.level, request_id=args.request_id, since_ms=since,
                    until_ms=until, log_group=args.log_group,
                    spilled_out=str(args.spilled_out) if args.spilled_out else None)
        log = LogParser()
        if args.follow:
            _follow(tail, log, view, args, stdout, sleep=sleep, monotonic=monotonic)
        else:
            log.feed_all(tail.poll())
        if args.spilled_out:
            args.spilled_out.write_text("".join(f"{line}\n" for line in log.spill_lines),
                                        encoding="utf-8")
        summary = summarise(log, view)
    except BrokenPipeError:
        raise  # a reader such as `| head` left: run_cli exits quietly
    except (LogsError, OSError) as exc:
        stderr.write(f"error: {exc}\n")
        return 2
    written = f"{summary['spill']['lines']} {SPILL_EVENT} lines written to {args.spilled_out}\n"
    if args.follow:
        if args.spilled_out:
            stderr.write(written)
    elif args.json:
        json.dump(summary, stdout, indent=2)
        stdout.write("\n")
    else:
        render_text(summary, stdout)
        if args.spilled_out:
            stdout.write(written)
    return 0


def _follow(
    tail: CloudWatchTail | FileTail,
    log: LogParser,
    view: View,
    args: argparse.Namespace,
    out: TextIO,
    *,
    sleep: Callable[[float], None],
    monotonic: Callable[[], float],
) -> None:
    """Print rows (at their REPORT) and events as they arrive, until Ctrl-C or --follow-for."""
    deadline = None if args.follow_for is None else monotonic() + args.follow_for
    if not args.json:
        out.write(HEADER + "\n")
    try:
        while True:
            for item in log.feed_all(tail.poll()):
                if not (view.row(item) if isinstance(item, Invocation) else view.event(item)):
                    continue
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
    """``kafka-relay-logs`` / ``python -m kafka_relay.tools.logs``: no tracebacks."""
    return run_cli(lambda: main(sys.argv[1:], env=os.environ, stdout=sys.stdout,
                                stderr=sys.stderr), extra="logs")


if __name__ == "__main__":
    sys.exit(cli())
