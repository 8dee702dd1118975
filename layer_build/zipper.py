"""Reproducible zips: the same files give the same bytes, whatever their mtimes or walk order.

Entries are sorted, carry one fixed timestamp, Unix permissions normalised to
0644/0755 and deflate level 9; no directory entries. The bytes then depend
only on the file contents, their names and exec bits (and the zlib version).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from layer_build.errors import BuildError

DateTime = tuple[int, int, int, int, int, int]

#: The earliest time a zip can hold, used when SOURCE_DATE_EPOCH is not set.
ZIP_EPOCH: DateTime = (1980, 1, 1, 0, 0, 0)
_ZIP_EPOCH_SECONDS = 315532800
_UNIX_SYSTEM = 3
_COMPRESS_LEVEL = 9

OnConflict = Literal["error", "keep"]


def source_date_epoch(env: Mapping[str, str]) -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) if set: the time every entry carries."""
    raw = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BuildError(
            f"SOURCE_DATE_EPOCH={raw!r} is not an integer number of seconds: unset it or use "
            "e.g. $(git log -1 --format=%ct)"
        ) from None


def zip_date_time(epoch: int | None) -> DateTime:
    """The entries' timestamp: ``epoch`` in UTC (from 1980, zip's first year), else 1980-01-01."""
    if epoch is None:
        return ZIP_EPOCH
    return time.gmtime(max(epoch, _ZIP_EPOCH_SECONDS))[:6]


def is_executable(mode: int) -> bool:
    return bool(mode & 0o111)


@dataclass(frozen=True)
class Entry:
    data: bytes
    executable: bool

    @property
    def mode(self) -> int:
        return 0o755 if self.executable else 0o644


def check_arcname(name: str) -> str:
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or ".." in path.parts:
        raise BuildError(f"refusing zip entry {name!r}: entries must be relative paths inside it")
    return str(path)


class FileTree:
    """The files of one artifact, by zip entry name, before they are written."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def add(
        self, name: str, data: bytes, *, executable: bool, on_conflict: OnConflict = "error"
    ) -> None:
        name = check_arcname(name)
        existing = self._entries.get(name)
        if existing is not None:
            if existing.data == data or on_conflict == "keep":
                return
            raise BuildError(
                f"two sources disagree about {name}: the artifact can hold only one; "
                "check for a file that both the sources and a wheel provide"
            )
        self._entries[name] = Entry(data, executable)

    def add_dir(
        self, source: Path, prefix: str, *, include: Callable[[PurePosixPath], bool]
    ) -> int:
        """Add the files under ``source`` for which ``include(relative path)`` holds."""
        added = 0
        for path in sorted(source.rglob("*")):
            relative = PurePosixPath(path.relative_to(source).as_posix())
            if path.is_file() and include(relative):
                self.add(
                    f"{prefix}{relative}",
                    path.read_bytes(),
                    executable=is_executable(path.stat().st_mode),
                )
                added += 1
        return added

    def remove_prefix(self, prefix: str) -> int:
        """Drop every entry whose name starts with ``prefix``; how many were dropped."""
        doomed = [name for name in self._entries if name.startswith(prefix)]
        for name in doomed:
            del self._entries[name]
        return len(doomed)

    def items(self) -> Iterator[tuple[str, Entry]]:
        return iter(sorted(self._entries.items()))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @property
    def unzipped_bytes(self) -> int:
        return sum(len(entry.data) for entry in self._entries.values())


@dataclass(frozen=True)
class ZipResult:
    path: Path
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    files: int


def write_zip(tree: FileTree, out: Path, *, date_time: DateTime = ZIP_EPOCH) -> ZipResult:
    """Write ``tree`` to ``out`` atomically (no half-written zip is ever left at ``out``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, entry in tree.items():
                info = zipfile.ZipInfo(name, date_time)
                info.create_system = _UNIX_SYSTEM
                info.external_attr = (stat.S_IFREG | entry.mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, entry.data, compresslevel=_COMPRESS_LEVEL)
        tmp.chmod(0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ZipResult(
        path=out,
        sha256=file_sha256(out),
        zipped_bytes=out.stat().st_size,
        unzipped_bytes=tree.unzipped_bytes,
        files=len(tree),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_zip(archive_path: Path, dest: Path) -> list[Path]:
    """Unpack like Lambda does into /opt: keeping each entry's Unix permissions.

    (``zipfile.extractall`` drops them, and an extension without its exec bit
    never starts.)
    """
    extracted: list[Path] = []
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            check_arcname(info.filename.rstrip("/"))
            target = Path(archive.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                target.chmod(mode)
            extracted.append(target)
    return extracted
