"""dist/manifest.json: what each artifact is, so deploy can check it and people can compare."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from layer_build.errors import MissingArtifactError

MANIFEST_NAME = "manifest.json"
FORMAT = 1
FUNCTION_ARCH = "any"


def layer_file_name(arch: str) -> str:
    return f"kafka-relay-layer-{arch}.zip"


FUNCTION_FILE_NAME = "producer-functions.zip"
#: The views functions' own zip: their modules and DuckDB, for one architecture and Python.
VIEWS_FILE_NAME = "views-functions.zip"


@dataclass(frozen=True)
class Artifact:
    file: str
    kind: Literal["layer", "function", "views"]
    arch: str
    python_versions: tuple[str, ...]
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    wheels: tuple[str, ...]
    glibc: str | None  # oldest glibc its binary wheels load on; None when pure Python
    compatible_runtimes: tuple[str, ...]
    version: str = ""  # kafka_relay.__version__ of the sources it was built from

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            file=str(data["file"]),
            kind=data["kind"],
            arch=str(data["arch"]),
            python_versions=tuple(data["python_versions"]),
            sha256=str(data["sha256"]),
            zipped_bytes=int(data["zipped_bytes"]),
            unzipped_bytes=int(data["unzipped_bytes"]),
            files=int(data["files"]),
            wheels=tuple(data["wheels"]),
            glibc=data["glibc"],
            compatible_runtimes=tuple(data["compatible_runtimes"]),
            version=str(data.get("version", "")),
        )


@dataclass(frozen=True)
class Manifest:
    """Deterministic like the zips: no build time, no host names, sorted keys."""

    source_date_epoch: int | None
    pins: dict[str, dict[str, str]]  # requirements file -> {name: version}
    artifacts: tuple[Artifact, ...] = field(default=())

    def to_json(self) -> str:
        data = {"format": FORMAT, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(self, dist: Path) -> Path:
        path = dist / MANIFEST_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, dist: Path) -> Manifest:
        path = dist / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MissingArtifactError(
                f"{path} is missing: run ./build.sh build first"
            ) from None
        except json.JSONDecodeError as exc:
            raise MissingArtifactError(
                f"{path} is not valid JSON ({exc}): run ./build.sh build again"
            ) from None
        if data.get("format") != FORMAT:
            raise MissingArtifactError(
                f"{path} has format {data.get('format')!r}, this tool reads {FORMAT}: "
                "run ./build.sh build again"
            )
        return cls(
            source_date_epoch=data["source_date_epoch"],
            pins={str(k): dict(v) for k, v in data["pins"].items()},
            artifacts=tuple(Artifact.from_dict(item) for item in data["artifacts"]),
        )

    def layer(self, arch: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.kind == "layer" and artifact.arch == arch:
                return artifact
        raise MissingArtifactError(
            f"dist has no {arch} layer: run ./build.sh build --arch {arch}"
        )

    def function(self) -> Artifact:
        for artifact in self.artifacts:
            if artifact.kind == "function":
                return artifact
        raise MissingArtifactError("dist has no function zip: run ./build.sh build first")

    def views(self) -> Artifact:
        for artifact in self.artifacts:
            if artifact.kind == "views":
                return artifact
        raise MissingArtifactError("dist has no views zip: run ./build.sh build first")
