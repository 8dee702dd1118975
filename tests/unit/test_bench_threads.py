"""The per-thread cost tool's parsing of /proc and py-spy, and its per-invocation rows."""

from __future__ import annotations

import json

import pytest

from bench.threads import (
    Row,
    Task,
    parse_py_spy,
    parse_schedstat,
    parse_status,
    rows,
)

STATUS = ("Name:\trdk:broker-1\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t616\nGroups:\t \n"
          "voluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n")


def test_schedstat_gives_the_nanoseconds_on_the_cpu() -> None:
    assert parse_schedstat("209411 1992694 2\n") == 209411


def test_status_gives_the_kernel_name_and_the_voluntary_switches_only() -> None:
    assert parse_status(STATUS) == ("rdk:broker-1", 1234)


def test_py_spy_names_threads_by_their_kernel_tid() -> None:
    dump = [{"pid": 654, "thread_id": 139964640855744, "thread_name": "worker",
             "os_thread_id": 701, "active": False, "frames": []},
            {"pid": 654, "thread_id": 139964654885760, "thread_name": "MainThread",
             "os_thread_id": 654, "active": False, "frames": []},
            {"pid": 654, "thread_id": 1, "thread_name": None, "os_thread_id": None}]
    assert parse_py_spy(json.dumps(dump)) == {701: "worker", 654: "MainThread"}


def test_rows_are_per_invocation_in_start_order_with_new_threads_from_zero() -> None:
    before = {10: Task(10, "python", 1_000_000, 5), 12: Task(12, "python", 0, 0),
              11: Task(11, "rdk:main", 0, 0), 13: Task(13, "python", 7, 7)}  # 13 exits
    after = {10: Task(10, "python", 5_000_000, 13), 12: Task(12, "python", 2_000_000, 4),
             11: Task(11, "rdk:main", 400_000, 8), 14: Task(14, "python", 600_000, 2)}
    got = rows(before, after, {10: "MainThread", 12: "Thread-1", 14: "Thread-1"}, 4)
    assert [r.name for r in got] == ["MainThread", "#2 rdk:main", "Thread-1", "Thread-1 (2)"]
    assert got[0] == Row("MainThread", 1.0, 2.0)
    assert got[1].cpu_ms == pytest.approx(0.1)
    assert got[1].voluntary == 2.0
    assert got[2] == Row("Thread-1", 0.5, 1.0)
    assert got[3].cpu_ms == pytest.approx(0.15)
    assert got[3].voluntary == 0.5
