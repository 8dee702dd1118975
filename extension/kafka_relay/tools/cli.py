"""What every kafka-relay command line shares: one clear line instead of a traceback.

``run_cli(main)`` runs a CLI's ``main()`` and turns the failures a user can fix
into one ``error:`` line on stderr and exit status 2 (missing AWS region or
credentials; with ``extra=``, a dependency that extra installs), and a closed pipe
(``... | head``) into a quiet exit. Stdlib only: botocore's exceptions are
recognised only when botocore was already imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

USAGE_ERROR = 2
#: What the extras (pyproject's optional-dependencies) install: missing, they name the extra.
EXTRA_MODULES = frozenset({"boto3", "botocore", "confluent_kafka"})
_AWS_HINTS = {
    "NoRegionError": "no AWS region: pass --region, or set AWS_REGION / AWS_DEFAULT_REGION "
    "(or a profile's region)",
    "NoCredentialsError": "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "or AWS_PROFILE (after aws configure / aws sso login)",
}


def _aws_hint(exc: BaseException) -> str | None:
    botocore_errors = sys.modules.get("botocore.exceptions")
    if botocore_errors is None:
        return None
    for name, hint in _AWS_HINTS.items():
        kind = getattr(botocore_errors, name, None)
        if isinstance(kind, type) and isinstance(exc, kind):
            return hint
    return None


def _silence_stdout() -> None:
    """After EPIPE, Python's own flush at exit would complain again: point stdout at null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests): nothing to flush
        pass


def missing_extra(exc: ModuleNotFoundError, extra: str) -> str:
    """The one line for a dependency that ``pip install 'kafka-relay[extra]'`` brings."""
    return (f"this needs {(exc.name or '?').partition('.')[0]}, which kafka-relay installs "
            f"with its extra: pip install 'kafka-relay[{extra}]'")


def run_cli(main: Callable[[], int], *, stderr: TextIO | None = None,
            extra: str | None = None) -> int:
    """``main()``'s exit status; 2 with one line for a missing region, credentials or extra."""
    err = stderr if stderr is not None else sys.stderr
    try:
        try:
            return main()
        finally:  # also after --help's SystemExit: a closed pipe shows here, not at exit
            sys.stdout.flush()
    except ModuleNotFoundError as exc:
        if extra is None or (exc.name or "").partition(".")[0] not in EXTRA_MODULES:
            raise
        err.write(f"error: {missing_extra(exc, extra)}\n")
        return USAGE_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        hint = _aws_hint(exc)
        if hint is None:
            raise
        err.write(f"error: {hint}\n")
        return USAGE_ERROR
