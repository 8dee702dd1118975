"""run_cli: what a user can fix is one line and exit 2; a closed pipe is a quiet exit."""

from __future__ import annotations

import io

import pytest
from botocore.exceptions import NoCredentialsError, NoRegionError

from kafka_relay.tools.cli import run_cli


def failing(exc: BaseException) -> int:
    raise exc


@pytest.mark.parametrize(
    ("exc", "line"),
    [(NoRegionError(), "error: no AWS region: pass --region, or set AWS_REGION"),
     (NoCredentialsError(), "error: no AWS credentials: set AWS_ACCESS_KEY_ID")],
)
def test_a_missing_region_or_credentials_is_one_line_and_exit_2(
    exc: BaseException, line: str
) -> None:
    err = io.StringIO()

    code = run_cli(lambda: failing(exc), stderr=err)

    assert code == 2
    assert err.getvalue().startswith(line)
    assert err.getvalue().count("\n") == 1


def test_a_closed_pipe_exits_quietly() -> None:
    err = io.StringIO()

    assert run_cli(lambda: failing(BrokenPipeError()), stderr=err) == 0
    assert err.getvalue() == ""


def test_other_errors_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 // 0, stderr=io.StringIO())


def test_the_main_status_passes_through() -> None:
    assert run_cli(lambda: 3) == 3
