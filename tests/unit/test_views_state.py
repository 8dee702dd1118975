"""When the archive has caught up past an hour: a pure decision over both consumers'
progress."""

from __future__ import annotations

import pytest
from views_state import Progress, covered

END = 1_000_000


@pytest.mark.parametrize(("archive", "speed", "behind"), [
    ({}, {}, []),  # nothing consumed yet: nothing to wait for
    ({"t-0": Progress(5, END - 1)}, {"t-0": Progress(5, END - 1)}, []),  # caught up, idle
    ({"t-0": Progress(9, END)}, {"t-0": Progress(20, END + 5)}, []),  # read past the end
    ({"t-0": Progress(3, END - 1)}, {"t-0": Progress(9, END + 1)}, ["t-0"]),  # lagging
    ({}, {"t-1": Progress(0, 1)}, ["t-1"]),  # a partition only the speed layer has read
    ({"t-0": Progress(3, END - 1)}, {}, []),  # no speed layer to compare with
    ({"t-0": Progress(9, END), "t-1": Progress(1, 2)}, {"t-1": Progress(4, 5)}, ["t-1"]),
])
def test_an_hour_waits_only_for_partitions_the_archive_has_not_caught_up_on(
    archive: dict[str, Progress], speed: dict[str, Progress], behind: list[str],
) -> None:
    assert covered(END, archive, speed) == behind
