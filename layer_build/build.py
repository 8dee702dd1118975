"""Build the kafka-relay layer (one zip per architecture) and the producer functions' zip.

    python -m layer_build.build [--arch x86_64 arm64] [--python-version 3.11 ...]
                                [--out dist] [--wheelhouse build/wheelhouse] [--root .]

Layer ``kafka-relay-layer-<arch>.zip`` (unpacks to /opt in Lambda)::

    extensions/kafka-relay       the launcher, mode 0755
    python/kafka_relay/...       the extension and its client
    python/confluent_kafka/...   from manylinux wheels, one extension module per Python version,
                                 without the subpackages nothing imports (UNUSED_SUBPACKAGES)
    python/aws_msk_iam_sasl_signer/...  pure Python, for KAFKA_AUTH=msk-iam (boto3 and
                                 botocore come with the Lambda Python runtime)

Function zip ``producer-functions.zip``: ``function/*.py`` at the top and the
pure-Python wheels they need.

Views zip ``views-functions.zip``: ``function/views_*.py`` at the top and DuckDB
(``function/requirements-views.txt``) from its manylinux wheel, for the first ``--arch``
and the oldest ``--python-version`` (DuckDB's extension module is 67 MB unpacked: one copy,
so it stays apart from the producers' zip). All are reproducible (see ``zipper``) and
described in ``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from kafka_relay.tools.cli import run_cli
from layer_build.bytecode import add_bytecode, find_interpreters
from layer_build.errors import BuildError, LayerBuildError
from layer_build.limits import LAYER_GOAL_ZIPPED, check_combined, check_size
from layer_build.manifest import (
    FUNCTION_ARCH,
    FUNCTION_FILE_NAME,
    VIEWS_FILE_NAME,
    Artifact,
    Manifest,
    layer_file_name,
)
from layer_build.targets import (
    ARCHES,
    LOCAL_ONLY_VERSIONS,
    PYTHON_VERSIONS,
    UNUSED_SUBPACKAGES,
    Arch,
    arch,
    check_python_version,
    compatible_runtimes,
    elf_machine,
    glibc_text,
    local_python_version,
    version_key,
    wheel_glibc,
)
from layer_build.wheels import WheelSet, fetch_wheels, read_pins, unpack_wheel
from layer_build.zipper import FileTree, source_date_epoch, write_zip, zip_date_time

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = "extension/kafka-relay"
PACKAGE = "extension/kafka_relay"
LAYER_PINS = "extension/requirements.txt"
FUNCTION_DIR = "function"
FUNCTION_PINS = "function/requirements.txt"
VIEWS_PINS = "function/requirements-views.txt"
VIEWS_SOURCES = "views_*.py"
CONSTRAINTS = "constraints.txt"
#: In --out with --reuse: the digest of what the artifacts there were built from.
INPUTS_DIGEST = "inputs.sha256"

Log = Callable[[str], None]


def say(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class BuildConfig:
    root: Path = REPO_ROOT
    out: Path = REPO_ROOT / "dist"
    wheelhouse: Path = REPO_ROOT / "build" / "wheelhouse"
    arches: tuple[str, ...] = tuple(ARCHES)
    python_versions: tuple[str, ...] = PYTHON_VERSIONS
    epoch: int | None = None  # SOURCE_DATE_EPOCH
    pip: tuple[str, ...] = field(default=(sys.executable, "-m", "pip"))
    reuse: bool = False  # keep --out's artifacts when built from the same inputs (build())

    def __post_init__(self) -> None:
        if not self.arches or not self.python_versions:
            raise BuildError("nothing to build: give at least one --arch and --python-version")
        for name in self.arches:
            arch(name)
        for version in self.python_versions:
            check_python_version(version)


# The operator CLIs (kafka_relay.tools) run on a workstation; the runtime never imports them.
_NOT_SHIPPED = frozenset({"tools"})


def _is_package_file(path: PurePosixPath) -> bool:
    """Runtime modules and the typing marker: never tests, caches or the operator tools."""
    if path.parts and path.parts[0] in _NOT_SHIPPED:
        return False
    if any(part in {"__pycache__", "tests"} or part.startswith(".") for part in path.parts):
        return False
    if path.name.startswith("test_") or path.name.endswith("_test.py"):
        return False
    return path.suffix == ".py" or path.name == "py.typed"


def add_extension_sources(root: Path, tree: FileTree) -> None:
    launcher = root / LAUNCHER
    try:
        script = launcher.read_bytes()
    except FileNotFoundError:
        raise BuildError(f"{launcher} (the extension launcher) is missing") from None
    if not script.startswith(b"#!"):
        raise BuildError(
            f"{launcher} has no #! line: Lambda executes files in extensions/ directly"
        )
    # Lambda starts only executable files in /opt/extensions, whatever the checkout's mode.
    tree.add("extensions/kafka-relay", script, executable=True)
    package = root / PACKAGE
    if not (package / "__init__.py").is_file():
        raise BuildError(f"{package}/__init__.py is missing: the layer needs kafka_relay")
    tree.add_dir(package, "python/kafka_relay/", include=_is_package_file)


#: kafka-relay's licence and the third-party notices, at /opt/kafka-relay/ in Lambda.
LICENCE_FILES = ("LICENSE", "NOTICE")


def add_licence_files(root: Path, tree: FileTree) -> None:
    for name in LICENCE_FILES:
        try:
            tree.add(f"kafka-relay/{name}", (root / name).read_bytes(), executable=False)
        except FileNotFoundError:
            raise BuildError(f"{root / name} is missing: the layer ships its licence "
                             "and notices") from None


_VERSION = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)


def source_version(root: Path) -> str:
    """kafka_relay.__version__ of the checkout at ``root`` (read, not imported)."""
    init = root / PACKAGE / "__init__.py"
    found = _VERSION.search(init.read_text(encoding="utf-8")) if init.is_file() else None
    if found is None:
        raise BuildError(f"{init} has no __version__ = \"X.Y.Z\" line")
    return found[1]


def add_function_sources(root: Path, tree: FileTree, pattern: str = "*.py") -> None:
    sources = [
        path
        for path in sorted((root / FUNCTION_DIR).glob(pattern))
        if not path.name.startswith("test_")
    ]
    if not sources:
        raise BuildError(f"{root / FUNCTION_DIR} has no *.py handlers to package")
    for path in sources:
        tree.add(path.name, path.read_bytes(), executable=False)


def check_binaries(tree: FileTree, target: Arch, artifact: str) -> None:
    """Every ELF file must be for the target machine: pip's --platform is easy to get wrong."""
    for name, entry in tree.items():
        machine = elf_machine(entry.data)
        if machine is not None and machine != target.elf_machine:
            raise BuildError(
                f"{artifact}: {name} is built for ELF machine {machine}, not {target.name} "
                f"({target.elf_machine}); delete build/wheelhouse and build again"
            )


def _oldest(versions: Sequence[str]) -> str:
    return min(versions, key=version_key)


def drop_unused_subpackages(tree: FileTree) -> int:
    """Remove confluent-kafka's subpackages that nothing in a producer imports."""
    return sum(
        tree.remove_prefix(f"python/confluent_kafka/{name}/") for name in UNUSED_SUBPACKAGES
    )


class Builder:
    def __init__(self, config: BuildConfig, *, log: Log = say) -> None:
        self.config = config
        self.log = log
        self.date_time = zip_date_time(config.epoch)
        self.version = source_version(config.root)

    def _wheels(self, wheels: WheelSet) -> list[Path]:
        return fetch_wheels(
            wheels, wheelhouse=self.config.wheelhouse, pip=self.config.pip, log=self.log
        )

    def _unpack(self, wheels: WheelSet, tree: FileTree, *, prefix: str,
                names: list[str], floors: list[tuple[int, int]]) -> None:
        """Unpack ``wheels`` into ``tree``; note their names and glibc floors."""
        for wheel in self._wheels(wheels):
            unpack_wheel(wheel, tree, prefix=prefix)
            names.append(wheel.name)
            floor = wheel_glibc(wheel.name)
            if floor is not None:
                floors.append(floor)

    def layer(self, arch_name: str) -> Artifact:
        target = arch(arch_name)
        root = self.config.root
        tree = FileTree()
        add_extension_sources(root, tree)
        add_licence_files(root, tree)
        pins = read_pins(root / LAYER_PINS)
        wheel_names: list[str] = []
        floors: list[tuple[int, int]] = []
        for version in self.config.python_versions:
            # --no-deps: confluent-kafka needs nothing else at run time (typing_extensions,
            # declared for 3.10, is imported only under TYPE_CHECKING by the producer API);
            # the MSK IAM signer's boto3/botocore ship with the runtime, its click only
            # serves its CLI.
            wheels = WheelSet(
                label=f"layer-{target.name}",
                pins=pins,
                platforms=target.pip_platforms,
                python_version=version,
                implementation="cp",
            )
            self._unpack(wheels, tree, prefix="python/", names=wheel_names, floors=floors)
        drop_unused_subpackages(tree)
        self._bytecode(tree)
        name = layer_file_name(target.name)
        check_binaries(tree, target, name)
        glibc = max(floors) if floors else None
        return self._write(
            tree,
            name=name,
            kind="layer",
            arch_name=target.name,
            python_versions=self.config.python_versions,
            wheel_names=wheel_names,
            glibc=glibc,
            goal=LAYER_GOAL_ZIPPED,
        )

    def _bytecode(self, tree: FileTree) -> None:
        """Ship .pyc for each version an interpreter exists for here (/opt is read-only)."""
        interpreters = find_interpreters(self.config.python_versions)
        added = add_bytecode(tree, interpreters)
        missing = [v for v in self.config.python_versions if v not in interpreters]
        self.log(f"bytecode: {added} .pyc for Python {', '.join(sorted(interpreters)) or '-'}"
                 + (f"; no interpreter here for {', '.join(missing)}: those runtimes compile "
                    "the layer's modules at each cold start" if missing else ""))

    def function(self) -> Artifact:
        root = self.config.root
        tree = FileTree()
        add_function_sources(root, tree)
        constraints = root / CONSTRAINTS
        # Pure-Python wheels only: one zip for every architecture and runtime, resolved
        # for the oldest Python the build targets.
        python = _oldest(self.config.python_versions)
        wheels = WheelSet(
            label="function",
            pins=read_pins(root / FUNCTION_PINS),
            platforms=("any",),
            python_version=python,
            implementation="py",
            with_deps=True,
            constraints=constraints if constraints.is_file() else None,
        )
        wheel_names: list[str] = []
        for wheel in self._wheels(wheels):
            unpack_wheel(wheel, tree, prefix="")
            wheel_names.append(wheel.name)
        supported = tuple(
            version
            for version in (*LOCAL_ONLY_VERSIONS, *PYTHON_VERSIONS)
            if version_key(version) >= version_key(python)
        )
        return self._write(
            tree,
            name=FUNCTION_FILE_NAME,
            kind="function",
            arch_name=FUNCTION_ARCH,
            python_versions=supported,
            wheel_names=wheel_names,
            glibc=None,
            goal=None,
        )

    def views(self) -> Artifact:
        """The views functions' zip: their modules and DuckDB's binary wheel for one
        architecture and Python version (the runtime the views are deployed with)."""
        root = self.config.root
        target = arch(self.config.arches[0])
        python = _oldest(self.config.python_versions)
        tree = FileTree()
        add_function_sources(root, tree, VIEWS_SOURCES)
        wheels = WheelSet(
            label=f"views-{target.name}",
            pins=read_pins(root / VIEWS_PINS),
            platforms=target.pip_platforms,
            python_version=python,
            implementation="cp",
        )
        wheel_names: list[str] = []
        floors: list[tuple[int, int]] = []
        self._unpack(wheels, tree, prefix="", names=wheel_names, floors=floors)
        check_binaries(tree, target, VIEWS_FILE_NAME)
        return self._write(
            tree,
            name=VIEWS_FILE_NAME,
            kind="views",
            arch_name=target.name,
            python_versions=(python,),
            wheel_names=wheel_names,
            glibc=max(floors) if floors else None,
            goal=None,
        )

    def _write(
        self,
        tree: FileTree,
        *,
        name: str,
        kind: Literal["layer", "function", "views"],
        arch_name: str,
        python_versions: tuple[str, ...],
        wheel_names: list[str],
        glibc: tuple[int, int] | None,
        goal: int | None,
    ) -> Artifact:
        result = write_zip(tree, self.config.out / name, date_time=self.date_time)
        report = check_size(
            name,
            zipped_bytes=result.zipped_bytes,
            unzipped_bytes=result.unzipped_bytes,
            goal_bytes=goal,
        )
        runtimes = compatible_runtimes(python_versions, glibc)
        self.log(f"built {report.line()}, {result.files} files")
        self.log(f"  sha256 {result.sha256}")
        self.log(f"  runtimes {', '.join(runtimes) or 'none'}"
                 + (f" (its wheels need glibc >= {glibc_text(glibc)})" if glibc else ""))
        return Artifact(
            file=name,
            kind=kind,
            arch=arch_name,
            python_versions=python_versions,
            sha256=result.sha256,
            zipped_bytes=result.zipped_bytes,
            unzipped_bytes=result.unzipped_bytes,
            files=result.files,
            wheels=tuple(sorted(set(wheel_names))),
            glibc=glibc_text(glibc),
            compatible_runtimes=runtimes,
            version=self.version,
        )

    def run(self) -> Manifest:
        config = self.config
        self.log(
            f"building kafka-relay {self.version} for {', '.join(config.arches)}, Python "
            f"{', '.join(config.python_versions)} into {config.out}"
        )
        if local_python_version() not in config.python_versions:
            self.log(f"note: no binaries for this interpreter (Python {local_python_version()}): "
                     "the local sandbox cannot run this layer")
        function = self.function()  # first: its sources are the likelier to be missing
        layers = [self.layer(name) for name in config.arches]
        for layer in layers:
            check_combined(
                (function.file, layer.file), function.unzipped_bytes + layer.unzipped_bytes
            )
        views = self.views()
        manifest = Manifest(
            source_date_epoch=config.epoch,
            pins={
                LAYER_PINS: read_pins(config.root / LAYER_PINS),
                FUNCTION_PINS: read_pins(config.root / FUNCTION_PINS),
                VIEWS_PINS: read_pins(config.root / VIEWS_PINS),
            },
            artifacts=(*layers, function, views),
        )
        path = manifest.write(config.out)
        self.log(f"wrote {path}")
        return manifest


def inputs_digest(config: BuildConfig) -> str:
    """What the artifacts are made of: every source and pin file, the build code, the targets.

    Wheels are named by the pins, so the wheelhouse is not read; a changed file anywhere
    under extension/, function/ or layer_build/ (or a pin) gives a new digest.
    """
    digest = hashlib.sha256(repr((config.arches, config.python_versions, config.epoch)).encode())
    root = config.root
    files = [root / CONSTRAINTS, *(root / name for name in LICENCE_FILES),
             *(path for folder in ("extension", FUNCTION_DIR, "layer_build")
               for path in (root / folder).rglob("*"))]
    for path in sorted(files):
        relative = path.relative_to(root).as_posix()
        if "__pycache__" in relative or not path.is_file():
            continue
        digest.update(f"{relative}\0{path.stat().st_mode & 0o111}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build(config: BuildConfig, *, log: Log = say) -> Manifest:
    """Build; with ``config.reuse``, keep --out's artifacts built from the same inputs."""
    stamp = config.out / INPUTS_DIGEST
    digest = inputs_digest(config) if config.reuse else ""
    if config.reuse and stamp.is_file() and stamp.read_text().strip() == digest:
        try:
            manifest = Manifest.load(config.out)
        except LayerBuildError:
            manifest = None
        if manifest is not None and all((config.out / a.file).is_file()
                                        for a in manifest.artifacts):
            log(f"up to date: {config.out} (its sources, pins and build code are unchanged)")
            return manifest
    stamp.unlink(missing_ok=True)
    manifest = Builder(config, log=log).run()
    if config.reuse:
        stamp.write_text(digest + "\n")
    return manifest


def parse_args(argv: Sequence[str] | None) -> BuildConfig:
    parser = argparse.ArgumentParser(
        prog="python -m layer_build.build",
        description="Build the kafka-relay layer zips, the producer functions' zip and the "
        "views functions' zip.",
    )
    parser.add_argument(
        "--arch", nargs="+", action="extend", choices=list(ARCHES),
        help="architectures to build a layer for (default: all)",
    )
    parser.add_argument(
        "--python-version", nargs="+", action="extend",
        choices=[*PYTHON_VERSIONS, *LOCAL_ONLY_VERSIONS],
        help="Python versions whose confluent-kafka binaries the layer carries "
        f"(default: all of {', '.join(PYTHON_VERSIONS)}; "
        f"{', '.join(LOCAL_ONLY_VERSIONS)} only for a local sandbox)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="default: dist")
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT,
        help="checkout to build from: its extension/ and function/ (default: this one)",
    )
    parser.add_argument(
        "--wheelhouse", type=Path, default=REPO_ROOT / "build" / "wheelhouse",
        help="wheel cache; rebuilds are offline once it is filled (default: build/wheelhouse)",
    )
    parser.add_argument(
        "--for-sandbox", action="store_true",
        help="also carry the binaries for this interpreter, so the local sandbox (which runs "
        "the extension with it) can load the layer: demo and bench use this",
    )
    parser.add_argument(
        "--reuse", action="store_true",
        help="keep the artifacts in --out when their sources, pins and build code did not "
        "change since they were built with --reuse (the demo and the sandbox use this)",
    )
    args = parser.parse_args(argv)
    versions = set(args.python_version or PYTHON_VERSIONS)
    if args.for_sandbox:
        versions.add(local_python_version())
    return BuildConfig(
        root=args.root,
        out=args.out,
        wheelhouse=args.wheelhouse,
        arches=tuple(dict.fromkeys(args.arch or ARCHES)),
        python_versions=tuple(sorted(versions, key=version_key)),
        epoch=source_date_epoch(os.environ),
        reuse=args.reuse,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        build(parse_args(argv))
    except LayerBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
