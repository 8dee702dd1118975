"""The execution environment's file system, variables and processes.

``Layout`` plays Lambda's directories in a temp dir: layers merged in order
into ``opt/`` (Lambda's ``/opt``), the function into ``task/``
(``/var/task``), the runtime's own packages into ``runtime/``
(``/var/runtime``). ``Processes`` starts each extension and the runtime in its
own process group, so freezing (SIGSTOP), thawing (SIGCONT) and killing
reach every process they fork.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from devtools.procfs import PGRP, STATE, read_stat
from devtools.sandbox.cgroup import CpuTimes, EnvironmentCgroup, proc_cpu_ms
from devtools.sandbox.errors import SandboxError
from devtools.sandbox.logstream import OutputPump

#: Variables Lambda hides from extensions (they belong to the runtime and the function):
#: AWS documents AWS_EXECUTION_ENV and AWS_LAMBDA_MAX_CONCURRENCY as the runtime's too.
REDACTED_FOR_EXTENSIONS = ("_HANDLER", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
                           "AWS_EXECUTION_ENV", "AWS_LAMBDA_MAX_CONCURRENCY")
_RUNTIME_PATHS_SCRIPT = Path(__file__).with_name("runtime_paths.py")


@dataclass(frozen=True)
class Layout:
    root: Path
    opt: Path
    task: Path
    runtime: Path
    bin: Path
    python: str
    version: str  # "3.11"
    isolated: bool

    @classmethod
    def prepare(
        cls,
        root: Path,
        *,
        layers: Iterable[Path],
        function: Path,
        python: str,
        isolated: bool,
    ) -> Layout:
        opt, task, runtime, bin_dir = (root / n for n in ("opt", "task", "runtime", "bin"))
        for directory in (opt, task, runtime, bin_dir):
            directory.mkdir(parents=True)
        for layer in layers:
            unpack(layer, opt)
        unpack(function, task)
        version, paths = _runtime_packages(python)
        for path in paths:
            (runtime / Path(path).name).symlink_to(path)
        if isolated:
            # `python3` on PATH runs the interpreter without its site-packages: an
            # extension sees what Lambda's would (stdlib, boto3, its layer), no more.
            for name in ("python3", "python", f"python{version}"):
                wrapper = bin_dir / name
                wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} -S "$@"\n')
                wrapper.chmod(0o755)
        return cls(root, opt, task, runtime, bin_dir, python, version, isolated)

    def extensions(self) -> list[Path]:
        directory = self.opt / "extensions"
        return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []

    @property
    def python_flags(self) -> list[str]:
        return ["-S"] if self.isolated else []


def unpack(source: Path, dest: Path) -> None:
    """Merge a zip (keeping Unix modes, as Lambda does) or a directory into ``dest``."""
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
        return
    if not zipfile.is_zipfile(source):
        raise SandboxError(f"{source} is neither a directory nor a zip file: pass a built "
                           "layer/function zip (dist/*.zip) or a directory with its contents")
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise SandboxError(f"{source} holds an unsafe path {info.filename!r}")
            target = dest.joinpath(*name.parts)
            mode = info.external_attr >> 16
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                target.unlink(missing_ok=True)
                target.symlink_to(archive.read(info).decode())
                continue
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            if mode & 0o777:
                target.chmod(mode & 0o777)


def _runtime_packages(python: str) -> tuple[str, list[str]]:
    try:
        done = subprocess.run([python, "-I", str(_RUNTIME_PATHS_SCRIPT)], capture_output=True,
                              check=True, timeout=30, text=True)
        found = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxError(f"cannot inspect the interpreter {python!r}: {exc}") from exc
    if not any(Path(p).name == "awslambdaric" for p in found["paths"]):
        raise SandboxError(f"{python} has no awslambdaric: install the pinned dev requirements "
                           "(./build.sh test creates .venv with awslambdaric==4.2.2)")
    return str(found["version"]), list(found["paths"])


def lambda_environment(
    layout: Layout,
    *,
    runtime_api: str,
    handler: str,
    function_name: str,
    memory_mb: int,
    region: str,
    tmp_dir: Path,
    function_env: Mapping[str, str],
) -> dict[str, str]:
    """The runtime's environment, as Lambda sets it; the function's own variables win."""
    site = layout.opt / "python" / "lib" / f"python{layout.version}" / "site-packages"
    stream = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[$LATEST]{secrets.token_hex(16)}"
    path = [str(layout.bin)] if layout.isolated else []
    path += [str(Path(layout.python).parent), "/usr/local/bin", "/usr/bin", "/bin",
             str(layout.opt / "bin")]
    library_path = [str(layout.runtime / "lib"), str(layout.task), str(layout.task / "lib"),
                    str(layout.opt / "lib")]
    env = {
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": str(layout.task),
        "LAMBDA_RUNTIME_DIR": str(layout.runtime),
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{layout.version}",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        # Fake credentials of the right shape; the session token also serves as the
        # kafka-relay handoff token, as the execution role's does in Lambda.
        "AWS_ACCESS_KEY_ID": "ASIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "AWS_SESSION_TOKEN": secrets.token_urlsafe(96),
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        "TMPDIR": str(tmp_dir),
        "PATH": os.pathsep.join(path),
        "LD_LIBRARY_PATH": os.pathsep.join(library_path),
        "PYTHONPATH": os.pathsep.join([str(layout.task), str(site), str(layout.opt / "python"),
                                       str(layout.runtime)]),
    }
    return {**env, **function_env}


def extension_environment(runtime_env: Mapping[str, str], layout: Layout) -> dict[str, str]:
    """What an external extension gets: the function's environment minus the runtime's
    own variables, and only the runtime directory on PYTHONPATH (its launcher adds the
    layer's ``python/`` itself, as it must in Lambda)."""
    env = {k: v for k, v in runtime_env.items() if k not in REDACTED_FOR_EXTENSIONS}
    env["PYTHONPATH"] = str(layout.runtime)
    return env


@dataclass
class Proc:
    name: str
    kind: str  # "extension" | "runtime"
    popen: subprocess.Popen[bytes]
    pump: OutputPump
    exit_code: int | None = None  # set (under the condition) when it has exited

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.exit_code is None


class Processes:
    """The environment's processes, each the leader of its own process group, all in the
    environment's cgroup when it has one (they join it before running their own code)."""

    def __init__(
        self, cond: threading.Condition, *, on_line: Callable[[Proc, str], None],
        cgroup: EnvironmentCgroup | None = None,
    ) -> None:
        self._cond = cond
        self._on_line = on_line
        self.cgroup = cgroup
        self.all: list[Proc] = []

    def spawn(self, name: str, kind: str, argv: list[str], *, env: Mapping[str, str],
              cwd: Path) -> Proc:
        if self.cgroup is not None:
            argv = self.cgroup.wrap(kind, argv)
        read_fd, write_fd = os.pipe()
        try:
            popen = subprocess.Popen(
                argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=write_fd,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        pump = OutputPump(read_fd, lambda line: self._on_line(proc, line), name=name)
        proc = Proc(name, kind, popen, pump)
        pump.start()  # only now that its lines have a process to belong to
        with self._cond:
            self.all.append(proc)
        threading.Thread(target=self._watch, args=(proc,), daemon=True,
                         name=f"sandbox-wait-{name}").start()
        return proc

    def _watch(self, proc: Proc) -> None:
        code = proc.popen.wait()
        with self._cond:
            proc.exit_code = code
            self._cond.notify_all()

    def of_kind(self, kind: str) -> list[Proc]:
        return [p for p in self.all if p.kind == kind]

    def pids(self) -> list[int]:
        """Every live process in the environment's process groups (forks included)."""
        groups = {p.pid for p in self.all}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            fields = read_stat(int(entry))
            if fields and fields[PGRP].isdigit() and int(fields[PGRP]) in groups \
                    and fields[STATE] != "Z":
                found.append(int(entry))
        return sorted(found)

    def signal_groups(self, sig: signal.Signals, procs: Iterable[Proc] | None = None) -> None:
        for proc in self.all if procs is None else procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # group gone
                os.killpg(proc.pid, sig)

    def freeze(self, *, timeout_s: float = 1.0) -> None:
        """SIGSTOP every group and wait until the kernel shows each process stopped."""
        self.signal_groups(signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [read_stat(pid) for pid in self.pids()]
            if all(s is None or s[STATE] in "TtZX" for s in states):
                return
            time.sleep(0.002)

    def thaw(self) -> None:
        self.signal_groups(signal.SIGCONT)

    def max_memory_mb(self) -> int:
        """Peak resident memory of the environment: the sum of each process's VmHWM."""
        total_kb = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        return math.ceil(total_kb / 1024)

    def cpu_times(self) -> CpuTimes:
        """CPU used so far (user + sys) by the runtime's and the extensions' processes:
        the cgroups' accounting, else the group leaders' and their reaped children's."""
        if self.cgroup is not None:
            return self.cgroup.usage()
        return CpuTimes(proc_cpu_ms(p.pid for p in self.of_kind("runtime")),
                        proc_cpu_ms(p.pid for p in self.of_kind("extension")))

    def settle(self, timeout_s: float) -> None:
        """Wait (bounded) until every process's output written so far is in the stream."""
        deadline = time.monotonic() + timeout_s
        while not all(p.pump.settled() for p in self.all) and time.monotonic() < deadline:
            time.sleep(0.002)

    def close(self, timeout_s: float = 2.0) -> None:
        """SIGKILL whatever is left, reap it, and drain the output pumps."""
        self.signal_groups(signal.SIGCONT)
        self.signal_groups(signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        for proc in self.all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            proc.pump.join(max(0.0, deadline - time.monotonic()))
        if self.cgroup is not None:
            # Also kills what escaped the process groups (a forked daemon with setsid).
            self.cgroup.remove()


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``T`` when stopped), None when gone."""
    fields = read_stat(pid)
    return fields[STATE] if fields else None
