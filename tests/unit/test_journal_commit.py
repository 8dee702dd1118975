"""A batch is restored whole or not at all: whatever byte a kill cuts the journal's last
batch at, and whatever bytes may follow the cut, the next init restores exactly the batches
whose append completed, byte-identical, and nothing of the one that was cut."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay.delivery import journal as journal_module
from kafka_relay.delivery.journal import FILE_GLOB, Journal, _read_segment, encode_batch
from kafka_relay.observability.log import JsonLogger
from kafka_relay.record import Record
from tests.unit.test_journal_read_back import counted_preads

Fields = tuple[object, ...]


def _fields(record: Record) -> Fields:
    """Everything a restored record is rebuilt from."""
    return (record.id, record.topic, record.key, record.value, record.headers,
            record.timestamp_ms, record.request_id, record.accepted_ms, record.attempts,
            record.first_failed_ms, record.last_error, record.dlq_error)


_record = st.tuples(st.none() | st.binary(max_size=30), st.none() | st.binary(max_size=90),
                    st.lists(st.tuples(st.sampled_from(["h", "trace"]), st.binary(max_size=8)),
                             max_size=2),
                    st.none() | st.integers(min_value=0, max_value=2**41),
                    st.booleans())


def _journaled(directory: Path, batches: list[list[Record]]) -> tuple[bytes, list[int]]:
    """The segment a journal wrote for ``batches``, and where each batch ended in it (the
    first entry: where the first began)."""
    journal = Journal(directory, JsonLogger(stream=io.StringIO()))
    assert journal.open()
    ends: list[int] = []
    for batch in batches:
        journal.append([r.id for r in batch], encode_batch(batch, sum(r.size for r in batch)))
        (segment,) = directory.glob(FILE_GLOB)
        ends.append(segment.stat().st_size)
    data = segment.read_bytes()
    journal.release()  # the files stay, as a killed process leaves them
    segment.unlink()
    return data, [data.index(b"\n") + 1, *ends]


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.lists(_record, min_size=1, max_size=6), min_size=1, max_size=3),
       frame=st.integers(min_value=1, max_value=200),
       garbage=st.binary(max_size=24))
def test_a_batch_cut_at_any_byte_is_restored_not_at_all_and_the_completed_ones_whole(
    shapes: list[list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None,
                            bool]]],
    frame: int, garbage: bytes,
) -> None:
    batches: list[list[Record]] = []
    for number, shape in enumerate(shapes):
        batch = []
        for index, (key, value, headers, timestamp, failed) in enumerate(shape):
            record = Record(id=f"b{number}-r{index}", topic="t", key=key, value=value,
                            headers=tuple(headers), timestamp_ms=timestamp,
                            request_id=f"req-{number}", accepted_ms=1000 + number)
            if failed:
                record.attempts, record.last_error = 2, "broker down"
            batch.append(record)
        batches.append(batch)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal_module, "FRAME_BYTES", frame)  # small: most batches are several
        data, ends = _journaled(Path(tmp), batches)
        cut_file = Path(tmp) / "cut.bin"
        # Every byte a kill can cut the last batch at (from none of it to all of it), each
        # with what may follow a cut.
        for cut in range(ends[-2], ends[-1] + 1):
            written = data[:cut] + garbage
            cut_file.unlink(missing_ok=True)  # not truncated: ext4 flushes a truncated file
            cut_file.write_bytes(written)
            read = _read_segment(cut_file)
            whole = [batch for batch, end in zip(batches, ends[1:], strict=True)
                     if written[:end] == data[:end]]
            assert list(map(_fields, read[0])) == [_fields(r) for b in whole for r in b], cut


def test_records_of_batches_journaled_one_after_another_read_back_with_one_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit mark between two batches does not split a run of frames."""
    journal = Journal(tmp_path, JsonLogger(stream=io.StringIO()))
    assert journal.open()
    records = [Record(id=f"r{i}", topic="t", key=b"k%d" % i, value=os.urandom(50))
               for i in range(15)]
    for first in range(0, 15, 3):
        batch = records[first:first + 3]
        journal.append([r.id for r in batch], encode_batch(batch, sum(r.size for r in batch)))
    reads = counted_preads(monkeypatch)
    found, problems = journal.read_back([r.id for r in records])
    assert (found, problems) == ({r.id: (r.key, r.value) for r in records}, {})
    (segment,) = tmp_path.glob(FILE_GLOB)
    data = segment.read_bytes()
    first, mark = data.index(b"\n") + 1, 8
    assert reads == [len(data) - mark - first]  # the first frame to the last one's end
    journal.release(remove=True)
