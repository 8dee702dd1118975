"""layer_build without network: reproducible zips, layer layout, size limits, wheels, env files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from layer_build.build import (
    BuildConfig,
    add_extension_sources,
    check_binaries,
    drop_unused_subpackages,
    parse_args,
)
from layer_build.envfile import parse_env_file, parse_env_text
from layer_build.errors import BuildError, EnvFileError, SizeLimitError
from layer_build.limits import (
    DIRECT_UPLOAD_LIMIT,
    LAYER_GOAL_ZIPPED,
    UNZIPPED_LIMIT,
    check_combined,
    check_size,
)
from layer_build.targets import (
    ARCHES,
    PYTHON_VERSIONS,
    REFUSED_RUNTIMES,
    RUNTIME_GLIBC,
    compatible_runtimes,
    elf_machine,
    wheel_glibc,
)
from layer_build.wheels import WheelSet, fetch_wheels, read_pins, unpack_wheel
from layer_build.zipper import (
    ZIP_EPOCH,
    FileTree,
    extract_zip,
    source_date_epoch,
    write_zip,
    zip_date_time,
)

FILES = {
    "extensions/kafka-relay": (b"#!/bin/sh\nexec python3 -m kafka_relay\n", True),
    "python/kafka_relay/__init__.py": (b'__version__ = "0"\n', False),
    "python/kafka_relay/client.py": (b"def send(): ...\n", False),
    "python/kafka_relay/producer/relay.py": (b"class Relay: ...\n", False),
}


def make_tree(root: Path, order: Sequence[str], *, mtime: int) -> None:
    for name in order:
        data, executable = FILES[name]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o775 if executable else 0o664)  # a group-writable checkout, normalised away
        os.utime(path, (mtime, mtime))


def zip_of_dir(root: Path, out: Path) -> str:
    tree = FileTree()
    tree.add_dir(root, "", include=lambda _path: True)
    return write_zip(tree, out).sha256


# --- reproducible zips ---------------------------------------------------------------------


def test_same_files_give_the_same_sha256_whatever_their_mtimes_and_creation_order(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "a", list(FILES), mtime=1_600_000_000)
    make_tree(tmp_path / "b", list(reversed(FILES)), mtime=1_700_000_000)

    first = zip_of_dir(tmp_path / "a", tmp_path / "a.zip")
    second = zip_of_dir(tmp_path / "b", tmp_path / "b.zip")

    assert first == second
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_entries_are_written_sorted_whatever_order_they_were_added_in(tmp_path: Path) -> None:
    forward, backward = FileTree(), FileTree()
    for name in FILES:
        forward.add(name, FILES[name][0], executable=FILES[name][1])
    for name in reversed(FILES):
        backward.add(name, FILES[name][0], executable=FILES[name][1])

    one = write_zip(forward, tmp_path / "one.zip")
    two = write_zip(backward, tmp_path / "two.zip")

    assert one.sha256 == two.sha256
    assert zipfile.ZipFile(one.path).namelist() == sorted(FILES)


def test_a_changed_byte_changes_the_sha256(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", list(FILES), mtime=0)
    before = zip_of_dir(tmp_path / "a", tmp_path / "before.zip")
    (tmp_path / "a/python/kafka_relay/client.py").write_bytes(b"def send(): pass\n")

    assert zip_of_dir(tmp_path / "a", tmp_path / "after.zip") != before


def test_entries_carry_1980_or_source_date_epoch_and_normalised_unix_modes(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "a", list(FILES), mtime=1_700_000_000)
    tree = FileTree()
    tree.add_dir(tmp_path / "a", "", include=lambda _path: True)
    epoch = source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"})

    default = write_zip(tree, tmp_path / "default.zip")
    dated = write_zip(tree, tmp_path / "dated.zip", date_time=zip_date_time(epoch))

    infos = {info.filename: info for info in zipfile.ZipFile(default.path).infolist()}
    assert {info.date_time for info in infos.values()} == {ZIP_EPOCH}
    assert {info.create_system for info in infos.values()} == {3}
    assert infos["extensions/kafka-relay"].external_attr >> 16 == 0o100755
    assert infos["python/kafka_relay/client.py"].external_attr >> 16 == 0o100644
    dated_times = {info.date_time for info in zipfile.ZipFile(dated.path).infolist()}
    assert dated_times == {(2023, 11, 14, 22, 13, 20)}
    assert dated.sha256 != default.sha256
    assert source_date_epoch({}) is None
    assert zip_date_time(0) == ZIP_EPOCH  # zips cannot hold times before 1980


def test_a_malformed_source_date_epoch_is_refused_with_the_fix() -> None:
    with pytest.raises(BuildError, match=r"SOURCE_DATE_EPOCH='yesterday'.*git log"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


def test_zip_result_reports_sha_sizes_and_count(tmp_path: Path) -> None:
    tree = FileTree()
    tree.add("a.txt", b"x" * 1000, executable=False)
    tree.add("b/c.txt", b"y", executable=False)

    result = write_zip(tree, tmp_path / "out" / "r.zip")

    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert (result.zipped_bytes, result.unzipped_bytes, result.files) == (
        result.path.stat().st_size, 1001, 2,
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.zip"]  # no temp file left


@pytest.mark.parametrize("name", ["/etc/passwd", "../up.py", "a/../../b", "a\\b", ""])
def test_entries_outside_the_zip_root_are_refused(name: str) -> None:
    with pytest.raises(BuildError, match="relative paths"):
        FileTree().add(name, b"", executable=False)


def test_two_sources_disagreeing_about_one_file_is_an_error_unless_told_to_keep() -> None:
    tree = FileTree()
    tree.add("python/x.py", b"1", executable=False)
    tree.add("python/x.py", b"1", executable=False)  # the same bytes again: fine

    with pytest.raises(BuildError, match=r"two sources disagree about python/x\.py"):
        tree.add("python/x.py", b"2", executable=False)
    tree.add("python/x.py", b"2", executable=False, on_conflict="keep")
    assert len(tree) == 1


# --- layer layout --------------------------------------------------------------------------


def make_checkout(root: Path, *, launcher: bytes = b"#!/bin/sh\nexec python3 -m kafka_relay\n",
                  launcher_mode: int = 0o644) -> None:
    package = root / "extension" / "kafka_relay"
    for relative in [
        "__init__.py", "client.py", "py.typed", "handoff/server.py",
        "__pycache__/client.cpython-311.pyc", "handoff/__pycache__/server.cpython-311.pyc",
        "tests/test_client.py", "test_config.py", ".editor-swap.py", "notes.txt",
        "tools/__init__.py", "tools/logs.py",
    ]:
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {relative}\n")
    script = root / "extension" / "kafka-relay"
    script.write_bytes(launcher)
    script.chmod(launcher_mode)


def test_layer_gets_an_executable_launcher_and_runtime_sources_but_not_the_operator_tools(
    tmp_path: Path,
) -> None:
    make_checkout(tmp_path, launcher_mode=0o644)  # even a checkout that lost the exec bit
    tree = FileTree()

    add_extension_sources(tmp_path, tree)
    result = write_zip(tree, tmp_path / "layer.zip")

    assert tree.names() == [
        "extensions/kafka-relay",
        "python/kafka_relay/__init__.py",
        "python/kafka_relay/client.py",
        "python/kafka_relay/handoff/server.py",
        "python/kafka_relay/py.typed",
    ]
    modes = {i.filename: i.external_attr >> 16 for i in zipfile.ZipFile(result.path).infolist()}
    assert modes["extensions/kafka-relay"] == 0o100755
    unpacked = tmp_path / "opt"
    extract_zip(result.path, unpacked)
    launcher = unpacked / "extensions" / "kafka-relay"
    assert os.access(launcher, os.X_OK)
    assert not os.access(unpacked / "python/kafka_relay/client.py", os.X_OK)


def test_a_launcher_without_a_shebang_is_refused(tmp_path: Path) -> None:
    make_checkout(tmp_path, launcher=b"python3 -m kafka_relay\n")

    with pytest.raises(BuildError, match="no #! line"):
        add_extension_sources(tmp_path, FileTree())


def test_a_missing_launcher_is_named(tmp_path: Path) -> None:
    make_checkout(tmp_path)
    (tmp_path / "extension" / "kafka-relay").unlink()

    with pytest.raises(BuildError, match=r"extension/kafka-relay \(the extension launcher\)"):
        add_extension_sources(tmp_path, FileTree())


def elf_header(machine: int) -> bytes:
    # ELF64, little endian, e_type ET_DYN, then e_machine at byte 18.
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(
        2, "little"
    ) + bytes(44)


def test_shared_objects_for_the_wrong_machine_stop_the_build() -> None:
    assert elf_machine(elf_header(183)) == 183
    assert elf_machine(b"#!/bin/sh\n" + bytes(20)) is None
    tree = FileTree()
    tree.add("python/confluent_kafka/cimpl.so", elf_header(62), executable=True)

    check_binaries(tree, ARCHES["x86_64"], "layer.zip")
    with pytest.raises(BuildError, match=r"cimpl.so is built for ELF machine 62, not arm64"):
        check_binaries(tree, ARCHES["arm64"], "layer.zip")


# --- sizes ---------------------------------------------------------------------------------


def test_size_goal_is_reported_ok_or_over_but_never_fails() -> None:
    at_goal = check_size("layer.zip", zipped_bytes=LAYER_GOAL_ZIPPED, unzipped_bytes=1,
                         goal_bytes=LAYER_GOAL_ZIPPED)
    over = check_size("layer.zip", zipped_bytes=LAYER_GOAL_ZIPPED + 1, unzipped_bytes=1,
                      goal_bytes=LAYER_GOAL_ZIPPED)

    assert at_goal.within_goal
    assert at_goal.line().endswith("(goal <= 8.00 MB zipped: OK)")
    assert not over.within_goal
    assert over.line().endswith("(goal <= 8.00 MB zipped: over)")


def test_lambda_hard_limits_pass_at_the_limit_and_fail_one_byte_past_it() -> None:
    check_size("f.zip", zipped_bytes=DIRECT_UPLOAD_LIMIT, unzipped_bytes=UNZIPPED_LIMIT)

    with pytest.raises(SizeLimitError, match=r"f.zip is 50.00 MB zipped, past Lambda's 50.00 MB"):
        check_size("f.zip", zipped_bytes=DIRECT_UPLOAD_LIMIT + 1, unzipped_bytes=1)
    with pytest.raises(SizeLimitError, match=r"250.00 MB unzipped, past Lambda's 250.00 MB"):
        check_size("f.zip", zipped_bytes=1, unzipped_bytes=UNZIPPED_LIMIT + 1)


def test_a_function_and_its_layer_share_the_unzipped_limit() -> None:
    check_combined(("f.zip", "l.zip"), UNZIPPED_LIMIT)

    with pytest.raises(SizeLimitError, match=r"f.zip \+ l.zip unzip to 250.00 MB together"):
        check_combined(("f.zip", "l.zip"), UNZIPPED_LIMIT + 1)


# --- wheels --------------------------------------------------------------------------------


def test_wheel_platform_tags_decide_which_lambda_runtimes_can_load_them() -> None:
    new = wheel_glibc("confluent_kafka-2.16.1-cp311-cp311-manylinux_2_28_x86_64.whl")
    old = wheel_glibc("x-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    pure = wheel_glibc("requests-2.34.2-py3-none-any.whl")

    assert (new, old, pure) == ((2, 28), (2, 17), None)
    everything = ("3.14", "3.12", "3.13")
    assert compatible_runtimes(everything, new) == ("python3.12", "python3.13", "python3.14")
    assert compatible_runtimes(everything, old) == ("python3.12", "python3.13", "python3.14")
    assert compatible_runtimes(["3.13"], pure) == ("python3.13",)
    # A local-only build (the sandbox's 3.11) loads on no Lambda runtime the layer targets.
    assert compatible_runtimes(["3.11"], pure) == ()
    with pytest.raises(BuildError, match="not a manylinux or pure-Python wheel"):
        wheel_glibc("x-1-cp311-cp311-linux_x86_64.whl")


def test_requirements_must_be_exact_pins(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# pins\nconfluent-kafka==2.16.1  # the client\n\nRequests==2.34.2\n")
    loose = tmp_path / "loose.txt"
    loose.write_text("requests>=2\n")

    assert read_pins(good) == {"confluent-kafka": "2.16.1", "requests": "2.34.2"}
    with pytest.raises(BuildError, match=r"loose.txt:1: 'requests>=2' is not pinned"):
        read_pins(loose)


def write_wheel(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, (data, mode) in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


def test_unpacking_a_wheel_keeps_importable_files_and_drops_record_and_scripts(
    tmp_path: Path,
) -> None:
    wheel = write_wheel(tmp_path / "pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", {
        "pkg/__init__.py": (b"", 0o644),
        "pkg/_native.so": (b"\x7fELF", 0o755),
        "pkg.libs/libdep.so.1": (b"\x7fELF", 0o755),
        "pkg-1.0.data/platlib/pkg_extra.py": (b"", 0o644),
        "pkg-1.0.data/scripts/pkg-cli": (b"#!python", 0o755),
        "pkg-1.0.dist-info/METADATA": (b"Name: pkg", 0o644),
        "pkg-1.0.dist-info/RECORD": (b"...", 0o644),
    })
    tree = FileTree()

    unpack_wheel(wheel, tree, prefix="python/")

    assert tree.names() == [
        "python/pkg-1.0.dist-info/METADATA",
        "python/pkg.libs/libdep.so.1",
        "python/pkg/__init__.py",
        "python/pkg/_native.so",
        "python/pkg_extra.py",
    ]
    entries = dict(tree.items())
    assert entries["python/pkg/_native.so"].mode == 0o755
    assert entries["python/pkg/__init__.py"].mode == 0o644


def test_wheels_of_two_python_versions_share_one_tree(tmp_path: Path) -> None:
    common = {"pkg/__init__.py": (b"x = 1", 0o644), "pkg-1.0.dist-info/METADATA": (b"m", 0o644)}
    tree = FileTree()
    for tag in ("cp311", "cp312"):
        wheel = write_wheel(tmp_path / f"pkg-1.0-{tag}-{tag}-manylinux_2_28_x86_64.whl", {
            **common,
            f"pkg/_native.{tag}.so": (b"\x7fELF", 0o755),
            "pkg-1.0.dist-info/WHEEL": (f"Tag: {tag}".encode(), 0o644),
        })
        unpack_wheel(wheel, tree, prefix="python/")

    assert "python/pkg/_native.cp311.so" in tree
    assert "python/pkg/_native.cp312.so" in tree
    assert dict(tree.items())["python/pkg-1.0.dist-info/WHEEL"].data == b"Tag: cp311"


class FakePip:
    """Stands in for ``pip download``: records each call, writes one wheel into --dest."""

    def __init__(self, *, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(command))
        dest = Path(command[command.index("--dest") + 1])
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(
            command, self.returncode, "", "ERROR: No matching distribution found for pkg==1.0"
        )


def wheel_set(version: str = "1.0") -> WheelSet:
    return WheelSet(
        label="layer-x86_64", pins={"pkg": version}, platforms=("manylinux_2_28_x86_64",),
        python_version="3.11", implementation="cp",
    )


def test_wheels_are_downloaded_once_and_then_served_from_the_wheelhouse(tmp_path: Path) -> None:
    pip = FakePip()
    logged: list[str] = []

    first = fetch_wheels(wheel_set(), wheelhouse=tmp_path, pip=["pip"], log=logged.append,
                         runner=pip)
    again = fetch_wheels(wheel_set(), wheelhouse=tmp_path, pip=["pip"], log=logged.append,
                         runner=pip)
    repinned = fetch_wheels(wheel_set("1.1"), wheelhouse=tmp_path, pip=["pip"],
                            log=logged.append, runner=pip)

    assert first == again
    assert repinned != first  # a new pin never reuses the old wheels
    assert len(pip.calls) == 2
    command = pip.calls[0]
    assert command[:2] == ["pip", "download"]
    assert "--only-binary=:all:" in command
    assert "--no-deps" in command
    assert command[command.index("--platform") + 1] == "manylinux_2_28_x86_64"
    assert command[-1] == "pkg==1.0"
    assert len(logged) == 2


def test_a_failed_download_says_what_pip_said_and_leaves_no_cache_behind(
    tmp_path: Path,
) -> None:
    with pytest.raises(BuildError, match=r"(?s)first build needs the package index.*No matching"):
        fetch_wheels(wheel_set(), wheelhouse=tmp_path, pip=["pip"], log=lambda _line: None,
                     runner=FakePip(returncode=1))

    assert list(tmp_path.iterdir()) == []


# --- env files -----------------------------------------------------------------------------


def test_env_file_lines_comments_quotes_and_exports() -> None:
    text = r"""
# Kafka
KAFKA_BOOTSTRAP_SERVERS=pkc-1.eu-west-1.aws.confluent.cloud:9092   # the cluster
export KAFKA_API_KEY = "ABC#123"
KAFKA_API_SECRET='s3cr=t "quoted" \n kept'
RSS_FEED_URLS="https://a.example/rss,https://b.example/feed\n"
EMPTY=
HASH_IN_VALUE=a#b
KAFKA_TOPIC=first
KAFKA_TOPIC=second
"""
    assert parse_env_text(text) == {
        "KAFKA_BOOTSTRAP_SERVERS": "pkc-1.eu-west-1.aws.confluent.cloud:9092",
        "KAFKA_API_KEY": "ABC#123",
        "KAFKA_API_SECRET": r's3cr=t "quoted" \n kept',
        "RSS_FEED_URLS": "https://a.example/rss,https://b.example/feed\n",
        "EMPTY": "",
        "HASH_IN_VALUE": "a#b",
        "KAFKA_TOPIC": "second",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("just words", r"\.env:2: expected KEY=VALUE"),
        ("1BAD=x", r"\.env:2: expected KEY=VALUE"),
        ('KEY="open', r"\.env:2: the double-quoted value has no closing quote"),
        ("KEY='open", r"\.env:2: the single-quoted value has no closing quote"),
        ('KEY="a" b', r"\.env:2: unexpected 'b' after the quoted value"),
    ],
)
def test_env_file_errors_name_the_line_and_the_problem(line: str, problem: str) -> None:
    with pytest.raises(EnvFileError, match=problem):
        parse_env_text(f"# ok\n{line}\n", source=".env")


def test_a_missing_env_file_says_what_to_create(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match=r"not found: create it .*or pass --env-file"):
        parse_env_file(tmp_path / ".env")


# --- targets -------------------------------------------------------------------------------


def test_the_default_build_targets_the_amazon_linux_2023_runtimes_3_12_to_3_14() -> None:
    assert PYTHON_VERSIONS == ("3.12", "3.13", "3.14")
    assert parse_args([]).python_versions == PYTHON_VERSIONS
    assert set(RUNTIME_GLIBC) == {f"python{v}" for v in PYTHON_VERSIONS}
    assert all(glibc >= (2, 28) for glibc in RUNTIME_GLIBC.values())


def test_versions_sort_numerically_and_old_ones_build_only_on_request() -> None:
    assert parse_args(["--python-version", "3.14", "3.12"]).python_versions == ("3.12", "3.14")
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    for_sandbox = parse_args(["--for-sandbox"]).python_versions  # demo and bench: + this one
    assert set(for_sandbox) == {*PYTHON_VERSIONS, local}
    assert BuildConfig(python_versions=("3.11",)).python_versions == ("3.11",)  # sandbox
    with pytest.raises(BuildError, match=r"unsupported Python version '3.9'.*3.12, 3.13, 3.14"):
        BuildConfig(python_versions=("3.9",))


def test_amazon_linux_2_runtimes_are_refused_with_the_reason_and_the_way_out() -> None:
    for runtime in ("python3.10", "python3.11"):
        reason = REFUSED_RUNTIMES[runtime]
        assert reason.startswith(f"{runtime} runs on Amazon Linux 2 (glibc 2.26)")
        assert "manylinux2014" in reason
        assert "2.4.0" in reason
        assert reason.endswith("python3.12, python3.13 or python3.14 (Amazon Linux 2023)")
        assert runtime not in RUNTIME_GLIBC


def test_unused_confluent_kafka_subpackages_are_dropped_and_the_rest_kept() -> None:
    tree = FileTree()
    kept = [
        "python/confluent_kafka/__init__.py",
        "python/confluent_kafka/admin/__init__.py",
        "python/confluent_kafka/serialization/__init__.py",
        "python/confluent_kafka/_oauthbearer/aws/__init__.py",
        "python/confluent_kafka/avro_like.py",  # a prefix match must stop at the slash
    ]
    dropped = [
        "python/confluent_kafka/schema_registry/__init__.py",
        "python/confluent_kafka/schema_registry/rules/cel/x.py",
        "python/confluent_kafka/avro/__init__.py",
        "python/confluent_kafka/aio/producer/_p.py",
        "python/confluent_kafka/kafkatest/verifiable_client.py",
    ]
    for name in kept + dropped:
        tree.add(name, name.encode(), executable=False)

    assert drop_unused_subpackages(tree) == len(dropped)
    assert tree.names() == sorted(kept)
