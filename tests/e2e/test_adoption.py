"""What a new user runs: the container-image layout and the sandbox CLI with a local broker."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from devtools.kafka_broker import free_port, read_topic
from devtools.sandbox import Sandbox
from devtools.sandbox.__main__ import main as sandbox_cli
from tests.conftest import Artifacts, Broker

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "iac" / "container" / "Dockerfile"
ANY_FUNCTION = REPO / "tests" / "fixtures" / "any_function"
#: What the Lambda base images set; the Dockerfile's COPY lines use it.
IMAGE_ENV = {"LAMBDA_TASK_ROOT": "/var/task"}


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, args)


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            words = args.split()
            stages.append(Stage(words[2] if len(words) > 2 else str(len(stages))))
        else:
            stages[-1].instructions.append((instruction.upper(), args.strip()))
    return stages


def expand(path: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: {**IMAGE_ENV, **variables}[m.group(1)], path)


def unzip(archive: Path, into: Path) -> None:
    """What unzip does and Python's extractall does not: restore each file's mode bits."""
    with zipfile.ZipFile(archive) as source:
        for info in source.infolist():
            target = Path(source.extract(info, into))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                target.chmod(stat.S_IMODE(mode))


def build_image_root(dockerfile: Path, context: dict[str, Path], root: Path,
                     build_args: dict[str, str] | None = None) -> str:
    """Follow the Dockerfile's ARG / COPY / RUN unzip / CMD lines on disk; return the handler.

    ``context`` maps build-context paths to files (the built layer stands in for dist/);
    ``build_args`` are docker build's --build-arg values.
    """
    stage_roots: dict[str, Path] = {}
    handler = ""
    for stage in parse_dockerfile(dockerfile.read_text()):
        stage_root = root / "stages" / stage.name
        stage_root.mkdir(parents=True)
        stage_roots[stage.name] = stage_root
        variables: dict[str, str] = {}
        for instruction, args in stage.instructions:
            words = [expand(word, variables) for word in shlex.split(args)]
            if instruction == "ARG":
                name, _, default = args.partition("=")
                variables[name] = (build_args or {}).get(name, default)
            elif instruction == "COPY":
                *sources, destination = words
                origin = None
                if sources[0].startswith("--from="):
                    origin = stage_roots[sources.pop(0).removeprefix("--from=")]
                for source in sources:
                    found = (origin / source.lstrip("/") if origin
                             else context.get(source, REPO / source))
                    target = stage_root / destination.lstrip("/")
                    if found.is_dir():
                        shutil.copytree(found, target, dirs_exist_ok=True)
                    else:
                        if destination.endswith("/"):
                            target = target / found.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(found, target)
            elif instruction == "RUN" and words[0] == "unzip":
                archive = next(w for w in words[1:] if not w.startswith("-"))
                into = words[words.index("-d") + 1]
                unzip(stage_root / archive.lstrip("/"), stage_root / into.lstrip("/"))
            elif instruction == "CMD":
                handler = json.loads(args)[0]
    final = stage_roots[list(stage_roots)[-1]]
    shutil.copytree(final, root / "image")
    return handler


def test_the_container_image_layout_runs_the_extension_from_opt(
    artifacts: Artifacts, broker: Broker, topic: str, tmp_path: Path
) -> None:
    handler = build_image_root(
        DOCKERFILE, {"dist/kafka-relay-layer-x86_64.zip": artifacts.layer}, tmp_path)
    image = tmp_path / "image"

    extension = image / "opt" / "extensions" / "kafka-relay"
    assert os.access(extension, os.X_OK), "the extension must stay executable in /opt"
    assert (image / "opt" / "python" / "kafka_relay" / "client.py").is_file()
    with Sandbox(layers=[image / "opt"], function=image / "var" / "task", handler=handler,
                 env={"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_TOPIC": topic,
                      "KAFKA_RELAY_PORT": str(free_port())},
                 function_name="orders-producer", timeout_s=10.0) as sandbox:
        result = sandbox.invoke({"orders": [{"id": 1}, {"id": 2}]})
        sandbox.shutdown("spindown")

    assert result.status == "success", result.error
    assert result.payload["accepted"] == 2
    records = read_topic(broker.bootstrap, topic, expected=2)
    assert sorted((r.key or b"").decode() for r in records) == ["1", "2"]


def test_the_dockerfile_parser_follows_every_copy_line(tmp_path: Path) -> None:
    """If the Dockerfile gains a COPY the test cannot follow, this says so (no silent drift)."""
    stages = parse_dockerfile(DOCKERFILE.read_text())

    assert [s.name for s in stages] == ["kafka-relay-layer", "1"]
    final = [args for instruction, args in stages[-1].instructions if instruction == "COPY"]
    assert final[0] == "--from=kafka-relay-layer /layer/ /opt/"
    assert ("ARG", "ARCH=x86_64") in stages[0].instructions
    assert ("COPY", "dist/kafka-relay-layer-${ARCH}.zip /tmp/kafka-relay-layer.zip") in (
        stages[0].instructions)
    handled = {"ARG", "COPY", "RUN", "CMD"}
    assert {instruction for s in stages for instruction, _ in s.instructions} <= handled


def test_the_arch_build_argument_picks_that_architectures_layer_zip(
    artifacts: Artifacts, tmp_path: Path,
) -> None:
    # The x86_64 zip stands in for an arm64 one: this follows the layout only.
    build_image_root(DOCKERFILE, {"dist/kafka-relay-layer-arm64.zip": artifacts.layer},
                     tmp_path, build_args={"ARCH": "arm64"})

    assert (tmp_path / "stages" / "kafka-relay-layer" / "tmp" / "kafka-relay-layer.zip"
            ).read_bytes() == artifacts.layer.read_bytes()
    assert (tmp_path / "image" / "opt" / "extensions" / "kafka-relay").is_file()


def _docker_ignores(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent of it) decides."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:n]), glob) for n in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


def test_the_build_context_carries_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = [shlex.split(args)[0].replace("${ARCH}", arch)
              for _, args in [i for s in parse_dockerfile(DOCKERFILE.read_text())
                              for i in s.instructions if i[0] == "COPY"]
              if not args.startswith("--from=") for arch in ("x86_64", "arm64")]

    assert copied, "the Dockerfile copies from the context"
    assert not [path for path in copied if _docker_ignores(path, patterns)]
    for heavy in (".venv/bin/python", "build/local/x.zip", ".git/HEAD", "tests/conftest.py",
                  "dist/producer-functions.zip", "extension/kafka_relay/app.py"):
        assert _docker_ignores(heavy, patterns), heavy


def test_sandbox_cli_runs_your_function_with_the_layer_and_a_local_broker(
    artifacts: Artifacts,
) -> None:
    out, err = io.StringIO(), io.StringIO()

    code = sandbox_cli([
        "--layer", str(artifacts.layer), "--function", str(ANY_FUNCTION),
        "--handler", "any_producer.handler", "--event", '{"count": 3, "wait": true}',
        "--env", "KAFKA_TOPIC=orders", "--env", f"KAFKA_RELAY_PORT={free_port()}",
        "--with-broker",
    ], out=out, err=err)

    assert code == 0, out.getvalue() + err.getvalue()
    lines = out.getvalue().splitlines()
    invocation = json.loads(lines[0])
    assert invocation["status"] == "success"
    topics, summary = lines.index("--- topics ---"), lines.index("--- summary ---")
    [arrived] = [json.loads(line) for line in lines[topics + 1:summary]]
    assert arrived["topic"] == "orders"
    assert arrived["records"] == 3
    assert lines[summary + 1:] == [
        "invocations: 1 ok, 0 failed",
        "records: 3 accepted, 3 delivered, 0 dead-lettered, 0 spilled", "errors: none"]
    assert "local Kafka broker at 127.0.0.1:" in err.getvalue()


_APP = """
from kafka_relay import client


@client.relay_handler
def handler(event, context):
    result = client.send([{"key": str(order["id"]), "value": order} for order in event["orders"]])
    return {"accepted": result.accepted}
"""


def test_the_readmes_sandbox_example_runs_as_written_from_the_users_directory(
    tmp_path: Path,
) -> None:
    """The README's ./build.sh sandbox line, run where the user keeps their function: paths
    are the user's, relative to that directory. (One addition: a free KAFKA_RELAY_PORT, as
    other sandboxes may run on this machine.)"""
    with zipfile.ZipFile(tmp_path / "my_function.zip", "w") as archive:
        archive.writestr("app.py", _APP)
    (tmp_path / "event.json").write_text('{"orders": [{"id": 1}, {"id": 2}]}')
    # The documented example (docs/sandbox.md), word for word.
    command = ("./build.sh sandbox --function my_function.zip --handler app.handler "
               "--event @event.json --invocations 2 --env KAFKA_TOPIC=orders --with-broker")

    done = subprocess.run(
        [str(REPO / "build.sh"), *shlex.split(command)[1:],
         "--env", f"KAFKA_RELAY_PORT={free_port()}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        stdin=subprocess.DEVNULL)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    [arrived] = [json.loads(line) for line in
                 lines[lines.index("--- topics ---") + 1:lines.index("--- summary ---")]]
    assert (arrived["topic"], arrived["records"]) == ("orders", 4)
    assert "records: 4 accepted, 4 delivered, 0 dead-lettered, 0 spilled" in lines
