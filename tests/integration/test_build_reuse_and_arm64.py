"""The real build beyond the x86_64 artifacts the other build tests share: a reusing build's
decision to rebuild, and the arm64 layer. A module of its own so that a parallel run builds
these beside those, not after them."""

from __future__ import annotations

import shutil
from pathlib import Path

from layer_build.build import REPO_ROOT, BuildConfig, build
from layer_build.limits import LAYER_GOAL_ZIPPED, mib
from layer_build.manifest import layer_file_name
from layer_build.targets import PYTHON_VERSIONS
from layer_build.zipper import extract_zip
from tests.integration.test_build_artifacts import (
    EM_AARCH64,
    WHEELHOUSE,
    elf_machine_of,
    run_build,
)


def test_a_reusing_build_rebuilds_only_when_a_source_pin_or_build_file_changes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkout"
    for folder in ("extension", "function", "layer_build"):
        shutil.copytree(REPO_ROOT / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("constraints.txt", "LICENSE", "NOTICE"):
        shutil.copy(REPO_ROOT / name, root / name)
    config = BuildConfig(root=root, out=tmp_path / "out", wheelhouse=WHEELHOUSE,
                         arches=("x86_64",), python_versions=(PYTHON_VERSIONS[0],), reuse=True)

    def build_log() -> list[str]:
        log: list[str] = []
        build(config, log=log.append)
        return log

    def append_comment(path: Path) -> None:
        path.write_text(path.read_text() + "# changed\n")

    first, again = build_log(), build_log()
    append_comment(root / "extension" / "kafka_relay" / "client.py")
    changed = build_log()
    append_comment(root / "layer_build" / "limits.py")
    build_changed = build_log()
    (config.out / layer_file_name("x86_64")).unlink()
    artifact_gone = build_log()

    assert any(line.startswith("built ") for line in first)
    assert again == [f"up to date: {config.out} (its sources, pins and build code are "
                     "unchanged)"]
    for rebuilt in (changed, build_changed, artifact_gone):
        assert any(line.startswith("built kafka-relay-layer-x86_64.zip") for line in rebuilt)


def test_arm64_layer_holds_only_aarch64_shared_objects(tmp_path: Path) -> None:
    arm = run_build(REPO_ROOT, tmp_path / "dist", ("arm64",))
    opt = tmp_path / "opt"
    extract_zip(tmp_path / "dist" / layer_file_name("arm64"), opt)
    shared = [p for p in opt.rglob("*") if p.is_file() and ".so" in p.name]

    assert {p.name for p in shared} >= {
        f"cimpl.cpython-{v.replace('.', '')}-aarch64-linux-gnu.so" for v in PYTHON_VERSIONS
    }
    assert {elf_machine_of(p) for p in shared} == {EM_AARCH64}
    layer = arm.manifest.layer("arm64")
    assert layer.zipped_bytes <= LAYER_GOAL_ZIPPED, f"arm64 layer is {mib(layer.zipped_bytes)}"
