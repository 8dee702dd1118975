"""Build targets: Lambda architectures, Python versions, and which runtimes can load a wheel."""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from layer_build.errors import BuildError


@dataclass(frozen=True)
class Arch:
    """A Lambda architecture and how pip and ELF headers name it."""

    name: str  # Lambda's spelling: x86_64 | arm64
    machine: str  # the manylinux/uname spelling: x86_64 | aarch64
    elf_machine: int  # ELF e_machine of its shared objects

    @property
    def pip_platforms(self) -> tuple[str, ...]:
        # Newest tag first; confluent-kafka 2.16.1 only publishes manylinux_2_28 wheels,
        # older pins published manylinux2014 ones.
        return (f"manylinux_2_28_{self.machine}", f"manylinux2014_{self.machine}")


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "x86_64", 62),  # EM_X86_64
    "arm64": Arch("arm64", "aarch64", 183),  # EM_AARCH64
}

#: Python versions with a Lambda runtime the layer targets (the default build).
PYTHON_VERSIONS: tuple[str, ...] = ("3.12", "3.13", "3.14")

#: Versions buildable on request for a local interpreter only (the sandbox on a dev
#: machine): no Lambda runtime of theirs can load confluent-kafka 2.16.1, so their
#: artifacts list no compatible runtime and deploy refuses them.
LOCAL_ONLY_VERSIONS: tuple[str, ...] = ("3.10", "3.11")

#: glibc of the OS under each Lambda Python runtime the layer targets: Amazon Linux 2023.
RUNTIME_GLIBC: dict[str, tuple[int, int]] = {
    "python3.12": (2, 34),
    "python3.13": (2, 34),
    "python3.14": (2, 34),
}

_AL2_REFUSAL = (
    "runs on Amazon Linux 2 (glibc 2.26), which cannot load confluent-kafka 2.16.1's "
    "manylinux_2_28 wheels. The last confluent-kafka with manylinux2014 wheels (2.4.0, "
    "May 2024) bundles OpenSSL 3.0.12 (Oct 2023) and misses two years of librdkafka "
    "producer fixes, so kafka-relay ships no layer for it: move the function to "
    "python3.12, python3.13 or python3.14 (Amazon Linux 2023)"
)

#: Lambda Python runtimes the layer deliberately does not support, and why.
REFUSED_RUNTIMES: dict[str, str] = {
    "python3.10": f"python3.10 {_AL2_REFUSAL}",
    "python3.11": f"python3.11 {_AL2_REFUSAL}",
}

#: confluent-kafka subpackages nothing in the layer imports: Schema Registry clients,
#: the legacy Avro producer, asyncio wrappers and the test harness (about 1.6 MB unzipped
#: per copy). ``confluent_kafka/__init__`` imports only cimpl, _model, serialization,
#: error and the (de)serializing clients; cimpl imports admin and _oauthbearer.
UNUSED_SUBPACKAGES: tuple[str, ...] = ("aio", "avro", "kafkatest", "schema_registry")

_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_")


def arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise BuildError(
            f"unknown architecture {name!r}: use one of {', '.join(ARCHES)}"
        ) from None


def check_python_version(version: str) -> str:
    if version not in PYTHON_VERSIONS + LOCAL_ONLY_VERSIONS:
        raise BuildError(
            f"unsupported Python version {version!r}: Lambda runtimes the layer targets are "
            f"{', '.join(PYTHON_VERSIONS)} ({', '.join(LOCAL_ONLY_VERSIONS)} only for a local "
            "sandbox)"
        )
    return version


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def local_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def runtime_for(python_version: str) -> str:
    return f"python{python_version}"


def wheel_glibc(wheel_name: str) -> tuple[int, int] | None:
    """The oldest glibc a wheel runs on, from its platform tag; None for pure wheels.

    A compressed tag set (``manylinux_2_17_x86_64.manylinux2014_x86_64``) needs
    only one of its tags, so the lowest wins.
    """
    platforms = wheel_name.removesuffix(".whl").split("-")[-1].split(".")
    floors: list[tuple[int, int]] = []
    for platform in platforms:
        if platform == "any":
            return None
        matched = _MANYLINUX.match(platform)
        if matched:
            floors.append((int(matched[1]), int(matched[2])))
            continue
        legacy = _LEGACY_MANYLINUX.get(platform.split("_", 1)[0])
        if legacy is None:
            raise BuildError(
                f"wheel {wheel_name} is not a manylinux or pure-Python wheel, so Lambda may not "
                "load it: pin a version that publishes manylinux wheels"
            )
        floors.append(legacy)
    return min(floors)


def glibc_text(glibc: tuple[int, int] | None) -> str | None:
    return None if glibc is None else f"{glibc[0]}.{glibc[1]}"


def compatible_runtimes(
    python_versions: Iterable[str], glibc: tuple[int, int] | None
) -> tuple[str, ...]:
    """Lambda runtimes whose Python the artifact carries binaries for and whose OS loads them."""
    runtimes = (runtime_for(version) for version in sorted(set(python_versions), key=version_key))
    return tuple(
        runtime
        for runtime in runtimes
        if runtime in RUNTIME_GLIBC and (glibc is None or RUNTIME_GLIBC[runtime] >= glibc)
    )


def elf_machine(data: bytes) -> int | None:
    """The ELF header's e_machine, or None when ``data`` is not an ELF file."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    byte_order = "<" if data[5] == 1 else ">"
    return int(struct.unpack_from(f"{byte_order}H", data, 18)[0])
