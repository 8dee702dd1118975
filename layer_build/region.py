"""Is there an AWS region? Asked before anything is installed or built, so stdlib only.

    python -m layer_build.region [a command's arguments]   # exit 2 and one line when none

``./build.sh publish-layer``, ``deploy`` and ``teardown`` ask first, so a missing region is
one line, not the end of an install and two layer builds. The places are boto3's: the
command's ``--region``, ``AWS_DEFAULT_REGION`` (``AWS_REGION`` too, which newer SDKs read),
then the ``region`` of the profile (``AWS_PROFILE``, else ``default``) in the config file
(``AWS_CONFIG_FILE``, else ``~/.aws/config``). boto3 decides for real afterwards.
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

NO_REGION = "no AWS region: pass --region, or set AWS_DEFAULT_REGION (or a profile's region)"


def _option(argv: Sequence[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    return None


def find_region(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The region a command with these arguments will use, as far as the files tell."""
    chosen = _option(argv, "--region") or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if chosen:
        return chosen
    config_file = Path(env.get("AWS_CONFIG_FILE") or Path(env.get("HOME", "~")) / ".aws/config")
    profile = env.get("AWS_PROFILE") or "default"
    parser = configparser.RawConfigParser()
    try:
        parser.read(config_file.expanduser(), encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None  # boto3 will say what is wrong with the file
    section = profile if profile == "default" else f"profile {profile}"
    return parser.get(section, "region", fallback=None) or None


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    if find_region(argv, env) is None:
        sys.stderr.write(f"error: {NO_REGION}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
