"""Reading /proc/<pid>/stat: the fields after a command name that may hold anything."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from devtools.procfs import PGRP, START_TIME, STATE, STIME, UTIME, read_stat, stat_fields


@given(name=st.text(st.characters(codec="utf-8", exclude_characters="\0\n"), max_size=15),
       utime=st.integers(0, 2**40), stime=st.integers(0, 2**40))
def test_the_fields_after_the_name_are_found_whatever_the_name_holds(
        name: str, utime: int, stime: int) -> None:
    stat = (f"619 ({name}) S 614 614 30356 0 -1 4194304 105 0 0 0 {utime} {stime} 0 0 20 0 "
            "1 0 5111755 3133440 418\n")
    fields = stat_fields(stat)
    assert (fields[STATE], fields[PGRP], fields[START_TIME]) == ("S", "614", "5111755")
    assert (int(fields[UTIME]), int(fields[STIME])) == (utime, stime)


def test_this_process_reads_as_running_in_its_own_group() -> None:
    fields = read_stat(os.getpid())
    assert fields is not None
    assert fields[STATE] == "R"
    assert int(fields[PGRP]) == os.getpgrp()


def test_a_process_that_is_gone_reads_as_none() -> None:
    with open("/proc/sys/kernel/pid_max") as limit:
        beyond = int(limit.read()) + 1  # no process can have this id
    assert read_stat(beyond) is None
