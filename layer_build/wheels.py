"""Binary wheels for a target platform, cached in a wheelhouse, unpacked into a FileTree.

pip only downloads (``pip download --platform ... --only-binary=:all:``); the
wheels are unpacked here, which keeps the result independent of pip's
installer (no RECORD, INSTALLER or .pyc files) and lets one layer carry the
extension modules of several Python versions side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from layer_build.errors import BuildError
from layer_build.zipper import FileTree, is_executable

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)$")
_SCHEME_DIRS = ("purelib", "platlib")


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file; anything unpinned is refused."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise BuildError(f"{path} is missing: it pins what the artifact vendors") from None
    pins: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        matched = _PIN.match(text)
        if matched is None:
            raise BuildError(
                f"{path}:{number}: {text!r} is not pinned as name==version; "
                "builds are reproducible only from exact pins"
            )
        pins[matched[1].lower()] = matched[2]
    if not pins:
        raise BuildError(f"{path} pins nothing")
    return pins


@dataclass(frozen=True)
class WheelSet:
    """What to download: one resolution for one platform and Python version."""

    label: str
    pins: dict[str, str]
    platforms: tuple[str, ...]
    python_version: str
    implementation: str  # "cp" for binary wheels, "py" for pure ones
    with_deps: bool = False
    constraints: Path | None = None

    def requirements(self) -> list[str]:
        return [f"{name}=={version}" for name, version in sorted(self.pins.items())]

    def cache_key(self) -> str:
        """Changes with anything that changes the resolution, so stale wheels are never reused."""
        facts = {
            "requirements": self.requirements(),
            "platforms": self.platforms,
            "python": self.python_version,
            "implementation": self.implementation,
            "deps": self.with_deps,
            "constraints": self.constraints.read_text() if self.constraints else None,
        }
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.label}-{self.python_version}")
        return f"{slug}-{digest}"


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_pip(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(list(command), capture_output=True, text=True, env=env, check=False)


def fetch_wheels(
    wheels: WheelSet,
    *,
    wheelhouse: Path,
    pip: Sequence[str],
    log: Callable[[str], None],
    runner: Runner = run_pip,
) -> list[Path]:
    """The wheels for ``wheels``, downloaded once into ``wheelhouse/<key>/`` and reused.

    A finished download is renamed into place in one step, so a cache
    directory that exists is complete and later builds need no network.
    """
    cached = wheelhouse / wheels.cache_key()
    if not cached.is_dir():
        wheelhouse.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=wheelhouse, prefix=".download-"))
        try:
            log(f"downloading {wheels.label} wheels for Python {wheels.python_version} "
                f"({', '.join(wheels.platforms)}) into {cached}")
            command = [
                *pip, "download", "--dest", str(staging), "--only-binary=:all:",
                "--progress-bar", "off", "--implementation", wheels.implementation,
                "--python-version", wheels.python_version,
            ]
            for platform in wheels.platforms:
                command += ["--platform", platform]
            if not wheels.with_deps:
                command.append("--no-deps")
            if wheels.constraints is not None:
                command += ["--constraint", str(wheels.constraints)]
            result = runner([*command, *wheels.requirements()])
            if result.returncode != 0:
                raise BuildError(
                    f"pip could not download the {wheels.label} wheels for Python "
                    f"{wheels.python_version} on {', '.join(wheels.platforms)}; the first build "
                    f"needs the package index, later ones reuse {wheelhouse}. pip said:\n"
                    + _tail(result.stderr or result.stdout)
                )
            try:
                staging.rename(cached)
            except OSError:
                if not cached.is_dir():  # not a concurrent build that finished first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    found = sorted(cached.glob("*.whl"))
    if not found:
        raise BuildError(f"{cached} holds no wheels: delete it and build again")
    return found


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def unpack_wheel(wheel: Path, tree: FileTree, *, prefix: str) -> None:
    """Add a wheel's importable files to ``tree`` under ``prefix``, as an installer would.

    ``<name>.data/purelib|platlib`` go to the top; scripts, headers and data
    are not importable and stay out. RECORD is dropped: nothing pip-managed
    lives in a layer, and it would be wrong once wheels of several Python
    versions share one tree. Other dist-info files (metadata, licences) are
    the same in those wheels apart from WHEEL's tag, so the first one is kept.
    """
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename).parts
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in _SCHEME_DIRS:
                    continue
                parts = parts[2:]
            in_dist_info = parts[0].endswith(".dist-info")
            if in_dist_info and parts[-1] in {"RECORD", "RECORD.jws", "RECORD.p7s"}:
                continue
            tree.add(
                prefix + "/".join(parts),
                archive.read(info),
                executable=is_executable(info.external_attr >> 16),
                on_conflict="keep" if in_dist_info else "error",
            )
