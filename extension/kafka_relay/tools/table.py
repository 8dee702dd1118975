"""The per-invocation table of ``kafka-relay-logs``: parsing the lines, the math, the text.

Rows join the platform's START/END/REPORT lines with the relay's
``records.outcomes`` lines, which count, per request id, what became of the
records that invocation handed over: accepted, delivered, dead-lettered (the DLQ
acknowledged them), spilled, spooled and restored, wherever and whenever that
happened (a record spilled at SHUTDOWN counts in the row of the invocation that
sent it). ``records.outcomes`` lines written at SHUTDOWN also make the final
"after the last invocation" row, which says what happened then. The totals are
the sum of the rows; they are checked against ``shutdown.summary`` and the EMF
sums. Everything here is pure: lines in, a ``Summary`` out.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from kafka_relay.spill.codec import SPILL_EVENT, parse_spill_lines

LOGGER_NAME = "kafka-relay"
OUTCOMES_EVENT = "records.outcomes"
# What a row counts, in the order of its columns; then the records a crashed environment's
# journal handed to this one ("recovered": counted accepted, and pending, where they began).
COUNTS = ("accepted", "delivered", "dead_lettered", "spilled", "spooled", "restored",
          "recovered")
# Where each count is in the EMF lines and the shutdown summary.
EMF_NAMES = {"accepted": "RecordsAccepted", "delivered": "RecordsDelivered",
             "dead_lettered": "RecordsDeadLettered", "spilled": "RecordsSpilled",
             "spooled": "RecordsSpooled", "restored": "RecordsRestored"}
NO_REQUEST = "-"  # the extension's key for records that arrived without a request id
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
# INFO lines worth showing at the default level next to the warnings and errors.
_NOTABLE_INFO = frozenset({"shutdown.summary", "spool.restored"})
# Bookkeeping lines: they make the rows, they are not events.
_ROW_EVENTS = frozenset({"invocation.done", OUTCOMES_EVENT})
# Repeats of one event closer than this make one line ("broker unreachable from … to …").
REPEAT_GAP_MS = 60_000
_PLATFORM = re.compile(r"(?:^|\s)(START|END|REPORT) RequestId: ([\w-]+)")
# Longer names first, so "Billed Duration" is never read as "Duration".
_REPORT_FIELD = re.compile(
    r"(Billed Duration|Init Duration|Max Memory Used|Memory Size|Duration|Status): ([\w.]+)"
)


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


def _add(into: dict[str, int], counts: Mapping[str, Any]) -> None:
    for name in COUNTS:
        value = counts.get(name)
        if isinstance(value, int):
            into[name] = into.get(name, 0) + value


def pending_of(counts: Mapping[str, int]) -> int:
    """Still owned by the extension when the logs end (neither settled nor in the spool)."""
    settled = sum(counts.get(k, 0) for k in ("delivered", "dead_lettered", "spilled", "spooled"))
    return counts.get("accepted", 0) + counts.get("restored", 0) - settled


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
    counts: dict[str, int] = field(default_factory=dict)
    flush_ms: float | None = None

    @property
    def cold_start(self) -> bool:
        return self.init_ms is not None

    @property
    def pending(self) -> int:
        return pending_of(self.counts)

    @property
    def in_spool(self) -> int:
        return self.counts.get("spooled", 0) - self.counts.get("restored", 0)

    def problems(self) -> list[str]:
        """Why this row needs a look (empty: everything it sent is on its topic)."""
        found = []
        if self.status:
            found.append(f"status {self.status}")
        if self.pending:
            found.append(f"{self.pending} not settled in these logs")
        if self.in_spool > 0:
            found.append(f"{self.in_spool} still in the /tmp spool")
        if self.counts.get("dead_lettered"):
            found.append(f"{self.counts['dead_lettered']} on the DLQ")
        if self.counts.get("spilled"):
            found.append(f"{self.counts['spilled']} spilled: replay them")
        if self.counts.get("recovered"):
            found.append(f"{self.counts['recovered']} recovered from a crashed environment's "
                         "journal")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cold_start": self.cold_start, "pending": self.pending,
                "problems": self.problems()}


@dataclass(frozen=True)
class RelayEvent:
    ts_ms: int | None
    level: str
    event: str
    request_id: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    last_ms: int | None = None  # the last repeat's time, when repeats > 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Item = Invocation | RelayEvent


class LogParser:
    """Feed lines in order; ``feed`` returns what just became complete (for ``--follow``)."""

    def __init__(self) -> None:
        self._invocations: dict[str, Invocation] = {}
        self.events: list[RelayEvent] = []
        self.spill_lines: list[str] = []
        self.spill_ts_ms: list[int] = []
        self.emf_lines = 0
        self.emf: dict[str, int] = {}
        self.summaries: list[dict[str, Any]] = []
        self.after_last: dict[str, int] = {}  # settled at SHUTDOWN, after the last invocation

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
            if line.timestamp_ms is not None:
                self.spill_ts_ms.append(line.timestamp_ms)
            return []
        if "_aws" in entry:  # an EMF line, or a log line carrying its metrics
            self.emf_lines += 1
            for count, name in EMF_NAMES.items():
                if isinstance(entry.get(name), int | float):
                    self.emf[count] = self.emf.get(count, 0) + int(entry[name])
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
        if name == OUTCOMES_EVENT:
            by_request = entry.get("by_request")
            for rid, counts in (by_request.items() if isinstance(by_request, dict) else ()):
                if isinstance(counts, dict):
                    _add(self._invocation(str(rid)).counts, counts)
                    if entry.get("at") == "shutdown":
                        _add(self.after_last, counts)
            return []
        if name == "invocation.done":
            if request_id and isinstance(entry.get("flush_ms"), int | float):
                self._invocation(str(request_id)).flush_ms = float(entry["flush_ms"])
            return []
        if name == "shutdown.summary":
            self.summaries.append(entry)
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

    # -- the summary -------------------------------------------------------------------------

    def rows(self) -> list[Invocation]:
        """Invocations with a platform line or records; the no-request-id row only if used."""
        return [i for i in self._invocations.values()
                if i.request_id != NO_REQUEST or any(i.counts.values())]

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for row in self._invocations.values():
            _add(totals, row.counts)
        return {name: totals.get(name, 0) for name in COUNTS}

    def checks(self) -> list[str]:
        """Where the rows' totals disagree with the EMF sums or ``shutdown.summary`` (whose
        ``restored`` counts spool restores and journal recoveries together)."""
        totals = dict(self.totals())
        totals["restored"] += totals.pop("recovered")
        found = []
        if self.emf_lines:
            emf = {name: self.emf.get(name, 0) for name in totals}
            found += [f"{name}: rows {totals[name]} != EMF {emf[name]}"
                      for name in totals if totals[name] != emf[name]]
        if self.summaries:
            summed: dict[str, int] = {}
            for summary in self.summaries:
                _add(summed, summary)
            found += [f"{name}: rows {totals[name]} != shutdown.summary {summed.get(name, 0)}"
                      for name in totals if totals[name] != summed.get(name, 0)]
        return found

    def spill_places(self) -> dict[str, int]:
        """Where records were spilled for good (S3 objects, log lines), with counts."""
        places: dict[str, int] = {}
        for event in self.events:
            records = event.fields.get("records")
            if not isinstance(records, int):
                continue
            if event.event == "spill.s3":
                place = str(event.fields.get("destination"))
            elif event.event == "spill.log":
                place = f"{SPILL_EVENT} log lines"
            else:
                continue
            places[place] = places.get(place, 0) + records
        return places


def shown(event: RelayEvent, level: str) -> bool:
    """Whether ``event`` is shown at ``level`` (the default, WARNING, adds notable INFO)."""
    if event.event in _ROW_EVENTS:
        return False
    at_least = LEVELS.get(event.level, 0) >= LEVELS[level]
    return at_least or (level == "WARNING" and event.event in _NOTABLE_INFO)


def collapse(events: Iterable[RelayEvent], *, gap_ms: int = REPEAT_GAP_MS) -> list[RelayEvent]:
    """One line per run of the same event (librdkafka lines: any message) with less than
    ``gap_ms`` between repeats, in the order the runs began."""
    runs: list[RelayEvent] = []
    open_runs: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.level, event.event)
        index = open_runs.get(key)
        if index is not None:
            run = runs[index]
            last = run.last_ms or run.ts_ms
            if event.ts_ms is None or last is None or event.ts_ms - last < gap_ms:
                runs[index] = RelayEvent(run.ts_ms, run.level, run.event, run.request_id,
                                         run.fields, run.repeats + 1, event.ts_ms or last)
                continue
        open_runs[key] = len(runs)
        runs.append(event)
    return runs


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


# -- rendering -----------------------------------------------------------------------------

_COLUMNS = (("accepted", "ACC", 5), ("delivered", "DLV", 5), ("dead_lettered", "DLQ", 4),
            ("spilled", "SPILL", 5), ("spooled", "SPOOL", 5), ("restored", "REST", 5))
HEADER = (f"  {'REQUEST ID':<36}  {'DURATION':>10} {'BILLED':>7} {'INIT':>9} {'MEM MB':>9}  "
          + " ".join(f"{title:>{width}}" for _, title, width in _COLUMNS)
          + f" {'PEND':>5} {'FLUSH MS':>8}")


def format_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _cell(value: float | None, unit: str = "", *, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _counts_cells(counts: Mapping[str, int], pending: int | None) -> list[str]:
    return [*(f"{counts.get(name, 0):>{width}}" for name, _, width in _COLUMNS),
            f"{_cell(pending):>5}"]


def format_row(invocation: Invocation) -> str:
    memory = (f"{_cell(invocation.max_memory_mb)}/{_cell(invocation.memory_mb)}"
              if invocation.reported else "-")
    problems = invocation.problems()
    cells = [
        f"{'!' if problems else ' '} {invocation.request_id:<36} ",
        f"{_cell(invocation.duration_ms, ' ms', digits=2):>10}",
        f"{_cell(invocation.billed_ms, ' ms'):>7}",
        f"{_cell(invocation.init_ms, ' ms', digits=1):>9}",
        f"{memory:>9} ",
        *_counts_cells(invocation.counts, invocation.pending),
        f"{_cell(invocation.flush_ms, digits=1):>8}",
    ]
    if not invocation.reported and invocation.request_id != NO_REQUEST:
        problems = [*problems, "no REPORT yet"]
    if problems:
        cells.append("  " + "; ".join(problems))
    return " ".join(cells)


def format_event(event: RelayEvent) -> str:
    if event.repeats > 1 and event.event == "librdkafka":
        message = event.fields.get("message", "")
        return (f"{format_time(event.ts_ms)} {event.level:<7} broker unreachable from "
                f"{format_time(event.ts_ms)} to {format_time(event.last_ms)} "
                f"({event.repeats} librdkafka lines; first: {message})")
    details = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                       for k, v in event.fields.items())
    request = f" request_id={event.request_id}" if event.request_id else ""
    repeats = (f" (x{event.repeats} until {format_time(event.last_ms)}; the first:)"
               if event.repeats > 1 else "")
    return (f"{format_time(event.ts_ms)} {event.level:<7} {event.event}{repeats}{request} "
            f"{details}").rstrip()


def replay_commands(places: Mapping[str, int], *, log_group: str | None,
                    spilled_out: str | None, spill_ts_ms: list[int]) -> list[str]:
    """The exact commands that put the spilled records back."""
    commands = []
    s3 = [place for place in places if place.startswith("s3://")]
    if s3:
        prefix = _common_prefix(s3)
        commands.append(f"kafka-relay-replay {prefix} --dry-run   # then again without "
                        "--dry-run, add --delete to remove what was replayed")
    if any(not place.startswith("s3://") for place in places):
        if spilled_out:
            commands.append(f"kafka-relay-replay --log-file {spilled_out}")
        elif log_group and spill_ts_ms:
            commands.append(f"kafka-relay-replay --log-group {log_group} "
                            f"--start {min(spill_ts_ms)} --end {max(spill_ts_ms) + 1}")
        elif log_group:
            commands.append(f"kafka-relay-replay --log-group {log_group} --start 1d")
        else:
            commands.append("kafka-relay-logs ... --spilled-out spilled.log, then "
                            "kafka-relay-replay --log-file spilled.log")
    return commands


def _common_prefix(urls: list[str]) -> str:
    """The longest common prefix of S3 object URLs, cut back to a ``/``."""
    first, last = min(urls), max(urls)
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    common = first[:size]
    return common if len(urls) == 1 else common[: common.rfind("/") + 1]


@dataclass(frozen=True)
class View:
    """What to show: ``level`` and ``request_id`` filter rows and events, ``since_ms`` and
    ``until_ms`` select by time; the totals and checks always cover every line read."""

    level: str = "WARNING"
    request_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    log_group: str | None = None
    spilled_out: str | None = None

    def row(self, row: Invocation) -> bool:
        if self.request_id is not None:
            return row.request_id == self.request_id
        return self._in_time(row.start_ms)

    def event(self, event: RelayEvent) -> bool:
        if not shown(event, self.level):
            return False
        if self.request_id is not None and event.request_id != self.request_id:
            return False
        return self._in_time(event.ts_ms)

    def _in_time(self, ms: int | None) -> bool:
        if ms is None:
            return True
        return ((self.since_ms is None or ms >= self.since_ms)
                and (self.until_ms is None or ms < self.until_ms))


def summarise(parser: LogParser, view: View) -> dict[str, Any]:
    rows = [row for row in parser.rows() if view.row(row)]
    events = collapse(e for e in parser.events if view.event(e))
    places = parser.spill_places()
    spill_records = len(parse_spill_lines(parser.spill_lines).records)
    invocations = [r for r in parser.rows() if r.request_id != NO_REQUEST]
    return {
        "invocations": [row.as_dict() for row in rows],
        "after_last_invocation": {**{n: parser.after_last.get(n, 0) for n in COUNTS}},
        "events": [event.as_dict() for event in events],
        "totals": {"invocations": len(invocations),
                   "cold_starts": sum(1 for i in invocations if i.cold_start),
                   **parser.totals(), "pending": pending_of(parser.totals())},
        "checks": parser.checks(),
        "spill": {"lines": len(parser.spill_lines), "records": spill_records,
                  "places": places, "written_to": view.spilled_out,
                  "replay": replay_commands(places, log_group=view.log_group,
                                            spilled_out=view.spilled_out,
                                            spill_ts_ms=parser.spill_ts_ms)},
    }


def render_text(summary: Mapping[str, Any], out: TextIO) -> None:
    out.write(HEADER + "\n")
    for row in summary["invocations"]:
        out.write(format_row(_row(row)) + "\n")
    after = summary["after_last_invocation"]
    if any(after.values()):
        label = "(after the last invocation, SHUTDOWN)"
        out.write(f"  {label:<36}  {'':>10} {'':>7} {'':>9} {'':>9}  "
                  + " ".join(_counts_cells(after, None)[:-1]) + "\n")
    totals = summary["totals"]
    out.write(f"  {'TOTAL':<36}  {'':>10} {'':>7} {'':>9} {'':>9}  "
              + " ".join(_counts_cells(totals, totals["pending"])) + "\n")
    events = [RelayEvent(**event) for event in summary["events"]]
    out.write(f"\nrelay events ({len(events)}):\n")
    for event in events:
        out.write("  " + format_event(event) + "\n")
    out.write(f"\n{totals['invocations']} invocations ({totals['cold_starts']} cold); "
              + ", ".join(f"{name.replace('_', '-')} {totals[name]}" for name in COUNTS
                          if totals[name] or name != "recovered")
              + f", pending {totals['pending']}\n")
    checks = summary["checks"]
    out.write("check: the rows add up to the EMF sums and shutdown.summary\n" if not checks
              else "check FAILED (records unaccounted for): " + "; ".join(checks) + "\n")
    spill = summary["spill"]
    if spill["places"]:
        out.write(f"\nspilled records ({sum(spill['places'].values())}):\n")
        for place, records in spill["places"].items():
            out.write(f"  {records:>6}  {place}\n")
        out.write("replay them with:\n")
        for command in spill["replay"]:
            out.write(f"  {command}\n")


def _row(data: Mapping[str, Any]) -> Invocation:
    names = Invocation.__dataclass_fields__
    return Invocation(**{k: v for k, v in data.items() if k in names})
