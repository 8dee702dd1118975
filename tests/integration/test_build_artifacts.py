"""The real build: layer and function zips from this checkout and binary wheels.

Wheels come from the shared cache ``build/wheelhouse`` (the first run
downloads them from the package index, later runs are offline), so after
that the whole file takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import kafka_relay
from devtools.sandbox.runtime_paths import runtime_paths
from layer_build.build import REPO_ROOT, BuildConfig, build
from layer_build.deploy import LAYER_LICENSE
from layer_build.limits import DIRECT_UPLOAD_LIMIT, LAYER_GOAL_ZIPPED, UNZIPPED_LIMIT, mib
from layer_build.manifest import (
    FUNCTION_FILE_NAME,
    MANIFEST_NAME,
    VIEWS_FILE_NAME,
    Manifest,
    layer_file_name,
)
from layer_build.targets import PYTHON_VERSIONS, UNUSED_SUBPACKAGES
from layer_build.zipper import extract_zip, file_sha256

WHEELHOUSE = REPO_ROOT / "build" / "wheelhouse"
HANDLERS = ("rss_producer.py", "polymarket_producer.py")
EM_X86_64, EM_AARCH64 = 62, 183


@pytest.fixture(scope="module")
def source_root() -> Path:
    """This checkout: the real launcher, package and handlers."""
    return REPO_ROOT


@dataclass(frozen=True)
class Built:
    out: Path
    manifest: Manifest
    log: list[str]


def run_build(root: Path, out: Path, arches: tuple[str, ...]) -> Built:
    log: list[str] = []
    manifest = build(
        BuildConfig(root=root, out=out, wheelhouse=WHEELHOUSE, arches=arches), log=log.append
    )
    return Built(out, manifest, log)


@pytest.fixture(scope="module")
def x86(source_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return run_build(source_root, tmp_path_factory.mktemp("dist"), ("x86_64",))


@pytest.fixture(scope="module")
def unpacked_layer(x86: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    opt = tmp_path_factory.mktemp("opt")
    extract_zip(x86.out / layer_file_name("x86_64"), opt)
    return opt


def isolated_python(
    code: str, *paths: Path, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """An interpreter without site-packages (-S -s): only ``paths`` and the stdlib."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(map(str, paths))}
    return subprocess.run(
        [python, "-S", "-s", "-c", code],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def interpreter(version: str) -> str | None:
    """A working ``python<version>`` on PATH or under pyenv, if this machine has one."""
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(map(str, Path.home().glob(f".pyenv/versions/{version}.*/bin/python3")))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def test_layer_zip_has_the_launcher_the_package_and_confluent_kafka(x86: Built) -> None:
    with zipfile.ZipFile(x86.out / layer_file_name("x86_64")) as layer:
        infos = {info.filename: info for info in layer.infolist()}
    names = set(infos)

    assert infos["extensions/kafka-relay"].external_attr >> 16 == 0o100755
    assert "python/kafka_relay/__init__.py" in names
    assert "python/kafka_relay/client.py" in names
    assert not [n for n in names if n.startswith("python/kafka_relay/tools/")], \
        "the operator tools run on a workstation, not in the layer"
    assert "python/confluent_kafka/__init__.py" in names
    for version in PYTHON_VERSIONS:  # one extension module per Lambda Python runtime
        tag = version.replace(".", "")
        assert f"python/confluent_kafka/cimpl.cpython-{tag}-x86_64-linux-gnu.so" in names
    assert any(name.startswith("python/confluent_kafka.libs/librdkafka") for name in names)
    assert not [n for n in names if ".cpython-310-" in n or ".cpython-311-" in n]
    for unused in UNUSED_SUBPACKAGES:
        assert not [n for n in names if n.startswith(f"python/confluent_kafka/{unused}/")]
    assert "python/confluent_kafka/admin/__init__.py" in names  # cimpl imports it
    assert "python/confluent_kafka/_oauthbearer/aws/aws_autowire.py" in names  # cimpl, too
    # The MSK IAM signer, with the metadata it reads its own version from.
    assert "python/aws_msk_iam_sasl_signer/MSKAuthTokenProvider.py" in names
    assert "python/aws_msk_iam_sasl_signer_python-1.0.2.dist-info/METADATA" in names
    # Compiled modules only beside their sources, for the runtimes the layer is for (the
    # versions with an interpreter on the build machine; the others compile at start).
    tags = {f"cpython-{version.replace('.', '')}" for version in PYTHON_VERSIONS}
    for pyc in (n for n in names if "__pycache__" in n or n.endswith(".pyc")):
        folder, _, file = pyc.rpartition("/__pycache__/")
        module, tag, suffix = file.rsplit(".", 2)
        assert suffix == "pyc", pyc
        assert tag in tags, pyc
        assert f"{folder}/{module}.py" in names, pyc
    assert not [n for n in names if n.split("/")[1].startswith(("boto3", "botocore"))]
    assert not [n for n in names if "/tests/" in n or n.split("/")[-1].startswith("test_")]
    assert {n.split("/")[0] for n in names} == {"extensions", "python", "kafka-relay"}


def test_the_layer_carries_the_licence_the_notices_and_each_wheels_licence(x86: Built) -> None:
    with zipfile.ZipFile(x86.out / layer_file_name("x86_64")) as layer:
        names = set(layer.namelist())
        notice = layer.read("kafka-relay/NOTICE").decode()
        licence = layer.read("kafka-relay/LICENSE").decode()

    assert licence == (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0" in licence
    assert notice == (REPO_ROOT / "NOTICE").read_text()
    assert f"  {LAYER_LICENSE}\n" in notice, "NOTICE states the LicenseInfo publish sets"
    for wheel in ("confluent_kafka-2.16.1", "aws_msk_iam_sasl_signer_python-1.0.2"):
        assert [n for n in names if n.startswith(f"python/{wheel}.dist-info/")
                and "LICENSE" in n.rsplit("/", 1)[-1]], wheel


def test_manifest_describes_each_zip_exactly(x86: Built) -> None:
    on_disk = Manifest.load(x86.out)

    assert on_disk == x86.manifest
    assert [a.file for a in on_disk.artifacts] == [
        layer_file_name("x86_64"), FUNCTION_FILE_NAME, VIEWS_FILE_NAME]
    for artifact in on_disk.artifacts:
        path = x86.out / artifact.file
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
        assert artifact.sha256 == file_sha256(path)
        assert artifact.zipped_bytes == path.stat().st_size
        assert artifact.unzipped_bytes == sum(info.file_size for info in infos)
        assert artifact.files == len(infos)
    layer = on_disk.layer("x86_64")
    assert layer.python_versions == PYTHON_VERSIONS
    assert layer.glibc == "2.28"  # confluent-kafka 2.16.1 publishes manylinux_2_28 wheels only
    assert layer.compatible_runtimes == ("python3.12", "python3.13", "python3.14")
    assert len(layer.wheels) == len(PYTHON_VERSIONS) + 1  # one pure wheel shared by all
    assert "aws_msk_iam_sasl_signer_python-1.0.2-py2.py3-none-any.whl" in layer.wheels
    assert on_disk.pins["extension/requirements.txt"] == {
        "confluent-kafka": "2.16.1", "aws-msk-iam-sasl-signer-python": "1.0.2"
    }
    assert on_disk.function().python_versions == PYTHON_VERSIONS
    assert {a.version for a in on_disk.artifacts} == {kafka_relay.__version__}


def test_rebuilding_from_the_cli_gives_byte_identical_artifacts(
    x86: Built, source_root: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    result = subprocess.run(
        [
            sys.executable, "-m", "layer_build.build", "--arch", "x86_64",
            "--root", str(source_root), "--out", str(tmp_path), "--wheelhouse", str(WHEELHOUSE),
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "downloading" not in result.stdout  # served from the wheelhouse
    assert "goal <= 8.00 MB zipped: OK" in result.stdout
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (x86.out / MANIFEST_NAME).read_bytes()
    for artifact in x86.manifest.artifacts:
        assert file_sha256(tmp_path / artifact.file) == artifact.sha256


def test_layer_is_within_the_8_mb_goal(x86: Built, request: pytest.FixtureRequest) -> None:
    layer = x86.manifest.layer("x86_64")
    # The actual size, for reports (junit-xml) and the -rA summary.
    request.node.user_properties.append(("layer_zipped_bytes", layer.zipped_bytes))
    print(f"x86_64 layer: {mib(layer.zipped_bytes)} zipped, {mib(layer.unzipped_bytes)} unzipped")

    assert layer.zipped_bytes <= LAYER_GOAL_ZIPPED, f"layer is {mib(layer.zipped_bytes)} zipped"
    assert any(f"{mib(layer.zipped_bytes)} zipped" in line for line in x86.log)


def test_unpacked_layer_imports_confluent_kafka_and_kafka_relay_without_site_packages(
    unpacked_layer: Path,
) -> None:
    target = next(filter(None, map(interpreter, PYTHON_VERSIONS)), None)
    if target is None:
        pytest.skip(f"no Python {' / '.join(PYTHON_VERSIONS)} interpreter on this machine")
    python = unpacked_layer / "python"
    code = (
        "import json, sys\n"
        "import confluent_kafka, kafka_relay, kafka_relay.client\n"
        "producer = confluent_kafka.Producer({'bootstrap.servers': '127.0.0.1:9'})\n"
        "print(json.dumps({'confluent_kafka': confluent_kafka.__file__,"
        " 'kafka_relay': kafka_relay.__file__, 'librdkafka': confluent_kafka.libversion()[0],"
        " 'site': [p for p in sys.path if 'site-packages' in p],"
        " 'producer': type(producer).__name__}))\n"
    )

    result = isolated_python(code, python, python=target)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert Path(seen["confluent_kafka"]).is_relative_to(python)
    assert Path(seen["kafka_relay"]).is_relative_to(python)
    assert seen["librdkafka"].startswith("2.")
    assert seen["site"] == []
    assert seen["producer"] == "Producer"  # the native client loaded and built one
    assert os.access(unpacked_layer / "extensions" / "kafka-relay", os.X_OK)
    shared = [p for p in python.rglob("*") if p.is_file() and ".so" in p.name]
    assert {elf_machine_of(p) for p in shared} == {EM_X86_64}


@pytest.mark.parametrize("version", PYTHON_VERSIONS)
def test_each_target_python_imports_confluent_kafka_from_the_stripped_layer(
    unpacked_layer: Path, version: str
) -> None:
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this machine")
    code = (
        "import confluent_kafka, kafka_relay.client\n"
        "from confluent_kafka import Producer\n"
        "Producer({'bootstrap.servers': '127.0.0.1:9', 'compression.type': 'zstd',"
        " 'enable.idempotence': True})\n"
        "print(confluent_kafka.__file__)\n"
    )

    result = isolated_python(code, unpacked_layer / "python", python=python)

    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(unpacked_layer / "python")


def test_the_layers_msk_iam_signer_runs_on_the_runtimes_boto3_alone(
    unpacked_layer: Path, tmp_path: Path
) -> None:
    runtime = tmp_path / "runtime"  # what Lambda's Python runtime offers: boto3 and its deps
    runtime.mkdir()
    for path in runtime_paths(("boto3",)):
        (runtime / Path(path).name).symlink_to(path)
    code = (
        "import base64, json\n"
        "from kafka_relay.producer.msk_iam import AwsCredentials, msk_signer\n"
        "import aws_msk_iam_sasl_signer\n"
        "token, expiry = msk_signer('eu-west-1', AwsCredentials('AKIATEST', 's', 't'))\n"
        "url = base64.urlsafe_b64decode(token + '=' * (-len(token) % 4)).decode()\n"
        "print(json.dumps({'signer': aws_msk_iam_sasl_signer.__file__, 'url': url}))\n"
    )

    result = isolated_python(code, unpacked_layer / "python", runtime)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert Path(seen["signer"]).is_relative_to(unpacked_layer / "python")
    assert seen["url"].startswith("https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster")
    assert "User-Agent=aws-msk-iam-sasl-signer-python%2F1.0.2" in seen["url"]
    assert not (runtime / "click").exists()  # the signer's CLI dependency is not needed


def test_function_zip_holds_the_handlers_and_pure_python_dependencies(
    x86: Built, unpacked_layer: Path, tmp_path: Path
) -> None:
    files = extract_zip(x86.out / FUNCTION_FILE_NAME, tmp_path)
    top = {path.relative_to(tmp_path).parts[0] for path in files}

    assert set(HANDLERS) <= top
    assert {"requests", "feedparser", "urllib3", "certifi", "idna"} <= top
    assert not [p for p in files if ".so" in p.name]  # one zip fits every arch and runtime
    function = x86.manifest.function()
    assert function.glibc is None
    assert all(wheel.endswith("-none-any.whl") for wheel in function.wheels)
    # Everything a handler imports must come from its zip or the layer (as in /var/task, /opt).
    result = isolated_python(
        "import requests, rss_producer, polymarket_producer\n"
        "assert callable(rss_producer.handler) and callable(polymarket_producer.handler)\n"
        "print(requests.__version__)",
        tmp_path, unpacked_layer / "python",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.34.2"


VIEWS_MODULES = {"views_batch.py", "views_event.py", "views_model.py", "views_serve.py",
                 "views_speed.py", "views_sql.py", "views_state.py"}


def test_views_zip_holds_the_views_modules_and_duckdb_within_lambdas_limits(
    x86: Built, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    files = extract_zip(x86.out / VIEWS_FILE_NAME, tmp_path)
    top = {path.relative_to(tmp_path).parts[0] for path in files}
    views = x86.manifest.views()
    request.node.user_properties.append(("views_zipped_bytes", views.zipped_bytes))
    print(f"views zip: {mib(views.zipped_bytes)} zipped, {mib(views.unzipped_bytes)} unzipped")

    assert {p for p in top if p.endswith(".py")} == VIEWS_MODULES  # no producer modules
    assert "duckdb" in top
    shared = [p for p in files if ".so" in p.name]
    assert shared
    assert {elf_machine_of(p) for p in shared} == {EM_X86_64}
    assert views.python_versions == (PYTHON_VERSIONS[0],)
    assert views.compatible_runtimes == (f"python{PYTHON_VERSIONS[0]}",)
    assert views.wheels == ("duckdb-2.0.0-cp312-abi3-manylinux_2_27_x86_64"
                            ".manylinux_2_28_x86_64.whl",)
    assert views.zipped_bytes < DIRECT_UPLOAD_LIMIT
    assert views.unzipped_bytes < UNZIPPED_LIMIT
    assert x86.manifest.pins["function/requirements-views.txt"] == {"duckdb": "2.0.0"}
    python = interpreter(PYTHON_VERSIONS[0])
    if python is None:
        pytest.skip(f"no python{PYTHON_VERSIONS[0]} here to import the views zip with")
    # The archive's Parquet round trip with only the zip (and the stdlib) on the path.
    result = isolated_python(
        "from decimal import Decimal\n"
        "import views_sql\n"
        "row = dict(topic='p', partition=0, offset=1, timestamp_ms=2, relay_id='r',\n"
        "           market_id='m', token_id='t', outcome='Yes', question='q',\n"
        "           price='999999999999.000000000001', ts='2026-11-28T08:00:00Z')\n"
        "with views_sql.engine() as sql:\n"
        "    sql.add_object('archive_prices', sql.parquet('archive_prices', [row]))\n"
        "    (got,), _ = sql.rows('hour')\n"
        "assert got['sum'] == Decimal(row['price']), got\n"
        "print(views_sql.PRICE_TYPE, got['count'])",
        tmp_path, python=python,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DECIMAL(24,12)", "1"]


def elf_machine_of(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    order = "<" if header[5] == 1 else ">"
    return int(struct.unpack_from(f"{order}H", header, 18)[0])
