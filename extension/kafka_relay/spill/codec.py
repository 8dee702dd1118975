"""The spill formats: NDJSON (S3 objects, spool files) and packed ``KAFKA_RELAY_SPILL`` log lines.

Writers are generators so sinks stream: each line is written as soon as it is
built, and a process killed mid-spill keeps every line already written.
"""

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from kafka_relay.record import Record

SPILL_EVENT = "KAFKA_RELAY_SPILL"
# First line of every spool file: what wrote it, so foreign or older files are never read.
SPOOL_FORMAT = "kafka-relay-spool"
SPOOL_VERSION = 1
# CloudWatch Logs caps an event at 256 KB; stay well under with the envelope.
_MAX_LINE_DATA = 150_000


def spill_lines(records: Iterable[Record], *, reason: str) -> Iterator[str]:
    """``KAFKA_RELAY_SPILL`` log lines: records packed up to CloudWatch's event size, and a
    record too large for one line split into numbered chunks."""
    pack: list[str] = []
    size = 0
    reason_json = json.dumps(reason)

    def packed() -> str:
        return (f'{{"event":"{SPILL_EVENT}","level":"WARNING","reason":{reason_json},'
                f'"records":[{",".join(pack)}]}}')

    for record in records:
        data = record.spill_json()
        if len(data) > _MAX_LINE_DATA:
            yield from _chunks(record.id, data, reason)
            continue
        if pack and size + len(data) > _MAX_LINE_DATA:
            yield packed()
            pack, size = [], 0
        pack.append(data)
        size += len(data) + 1
    if pack:
        yield packed()


def _chunks(record_id: str, data: str, reason: str) -> Iterator[str]:
    chunks = [data[i:i + _MAX_LINE_DATA] for i in range(0, len(data), _MAX_LINE_DATA)]
    for index, chunk in enumerate(chunks):
        yield json.dumps(
            {"event": SPILL_EVENT, "level": "WARNING", "id": record_id, "reason": reason,
             "chunk": index, "chunks": len(chunks), "data": chunk},
            separators=(",", ":"),
        )


def ndjson_lines(records: Iterable[Record]) -> Iterator[str]:
    """One spilled record a line (newline included): the S3 object and spool file body."""
    for record in records:
        yield record.spill_json() + "\n"


def spool_header(reason: str) -> str:
    return json.dumps({"format": SPOOL_FORMAT, "version": SPOOL_VERSION, "reason": reason},
                      separators=(",", ":")) + "\n"


def is_spool_header(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("format") == SPOOL_FORMAT


def read_ndjson(text: str) -> list[Record]:
    """Records of an NDJSON spill; a spool header line is checked and skipped.

    Raises ValueError (or KeyError/TypeError) when a line is not a kafka-relay spill."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if is_spool_header(entry):
            if entry.get("version") != SPOOL_VERSION:
                raise ValueError(f"spool format version {entry.get('version')!r} is not "
                                 f"{SPOOL_VERSION}: read it with the kafka-relay that wrote it")
            continue
        records.append(Record.from_spill(entry))
    return records


class SpillRead(NamedTuple):
    records: list[Record]
    incomplete: list[str]  # ids of chunked records with chunks missing from the lines read


def parse_spill_lines(lines: Iterable[str]) -> SpillRead:
    """Spilled records in log lines (other lines are ignored), chunked ones reassembled."""
    records: list[Record] = []
    parts: dict[str, dict[int, str]] = {}
    totals: dict[str, int] = {}
    for line in lines:
        start = line.find("{")
        if start < 0 or SPILL_EVENT not in line:
            continue
        try:
            entry = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("event") != SPILL_EVENT:
            continue
        if "records" in entry:
            records.extend(Record.from_spill(item) for item in entry["records"])
            continue
        parts.setdefault(entry["id"], {})[int(entry["chunk"])] = entry["data"]
        totals[entry["id"]] = int(entry["chunks"])
    incomplete = []
    for record_id, chunks in parts.items():
        if len(chunks) == totals[record_id]:
            data = "".join(chunks[i] for i in range(totals[record_id]))
            records.append(Record.from_spill(json.loads(data)))
        else:
            incomplete.append(record_id)
    return SpillRead(records, incomplete)
