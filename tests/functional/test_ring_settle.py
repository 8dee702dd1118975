"""Settling ring records (``Rings.settled``): however the records of a ring's bodies settle
(one body's in one call, several bodies' interleaved, a body's over several calls, ids
settled twice or never kept), the consumed offset moves exactly over the leading bodies all
of whose records settled, and a ring keeps exactly the records not settled yet."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_relay import ring
from kafka_relay.delivery.rings import Entry, Rings

# Records per body; then the order all their ids settle in (a permutation, drawn as sort
# keys) and where that order is cut into ``settled`` calls; ids settled again or unknown.
_BODIES = st.lists(st.integers(1, 6), min_size=1, max_size=10)


@settings(max_examples=150, deadline=None)
@given(_BODIES, st.data())
def test_the_consumed_offset_moves_over_exactly_the_leading_bodies_fully_settled(
        records_per_body: list[int], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relay.ring"
        fd = ring.create(path, 64 * 1024)
        writer = ring.Ring(fd, path)
        os.close(fd)
        placed = [writer.append(b"body %d" % n, b"request") for n in range(len(records_per_body))]
        rings = Rings()
        file = rings.attach(ring.Ring.open(path), "tag")
        start = file.ring.consumed
        ids_of: list[list[str]] = []
        for (position, end), count in zip(placed, records_per_body, strict=True):
            ids = ring.record_ids("tag", position, count)
            rings.add(Entry(file, position, end - position), ids)
            ids_of.append(ids)
        every = [i for ids in ids_of for i in ids]
        order = data.draw(st.permutations(every))
        cuts = sorted(data.draw(st.sets(st.integers(1, len(every)), max_size=len(every))))
        settled: set[str] = set()
        for begin, stop in zip([0, *cuts], [*cuts, len(every)], strict=True):
            chunk = order[begin:stop]
            again = data.draw(st.lists(st.sampled_from([*sorted(settled), "tag-0-999"]),
                                       max_size=3)) if settled else []
            rings.settled([*chunk, *again])
            settled.update(chunk)
            done = 0
            while done < len(ids_of) and settled.issuperset(ids_of[done]):
                done += 1
            assert file.ring.consumed == (placed[done - 1][1] if done else start)
            assert set(rings.kept) == set(every) - settled
        writer.close()
        rings.close()
