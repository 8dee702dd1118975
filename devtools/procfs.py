"""``/proc/<pid>/stat``, read one way: its fields after the command name.

The name sits in parentheses and may itself hold spaces and parentheses, so the fields start
two characters after the *last* ``)``. Indices into the list this returns: 0 state, 2 process
group, 11-14 utime, stime, cutime, cstime (clock ticks), 19 start time (ticks since boot).
"""

from __future__ import annotations

from pathlib import Path

STATE, PGRP, UTIME, STIME, CSTIME, START_TIME = 0, 2, 11, 12, 14, 19


def stat_fields(text: str) -> list[str]:
    """The fields of a ``stat`` file's text after the command name."""
    return text[text.rfind(")") + 2:].split()


def read_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat``; None when the process is gone."""
    try:
        return stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None
