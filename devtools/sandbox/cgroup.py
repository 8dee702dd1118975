"""The environment's CPU, as Lambda allots it: a quota proportional to memory, and accounting.

Lambda gives a function CPU in proportion to its memory (1,769 MB = one vCPU), so
CPU an extension burns becomes billed milliseconds. The sandbox reproduces that
with a Linux cgroup per environment: ``cpu.max`` (v2) or ``cpu.cfs_quota_us`` (v1)
on the environment's group, and two leaf groups, ``runtime`` and ``extensions``,
whose CPU usage (user + sys, every process and child ever in them) is read per
invocation. Processes enter their leaf before they run any code of their own:
each is spawned through ``/bin/sh`` that writes its own pid into the leaf's
``cgroup.procs`` and then execs the real command (same pid, same process group).

Without a writable cgroup file system (not root, no cpu controller) the sandbox
runs unthrottled, says so once on stderr, and measures CPU from ``/proc`` instead
(the group leaders' own and reaped children's time).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devtools.procfs import CSTIME, UTIME, read_stat

#: Lambda: 1,769 MB of memory buys one full vCPU; CPU scales linearly with memory.
MB_PER_VCPU = 1769
PERIOD_US = 100_000
KINDS = ("runtime", "extensions")
_MOUNTINFO = Path("/proc/self/mountinfo")
_warned = threading.Event()  # set once the warning went out


def vcpus_for_memory(memory_mb: int) -> float:
    """Lambda's CPU share for ``memory_mb`` (256 MB -> 0.1447 vCPU)."""
    return memory_mb / MB_PER_VCPU


def quota_us(vcpus: float, period_us: int = PERIOD_US) -> int:
    """CPU microseconds per period for ``vcpus`` (the kernel wants at least 1 ms)."""
    return max(1000, round(vcpus * period_us))


@dataclass(frozen=True)
class CpuTimes:
    """CPU time (user + sys) in ms, of the runtime's and of the extensions' processes."""

    runtime_ms: float = 0.0
    extensions_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.runtime_ms + self.extensions_ms

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.runtime_ms - other.runtime_ms,
                        self.extensions_ms - other.extensions_ms)


@dataclass(frozen=True)
class Hierarchies:
    """Where the cgroup file systems are: the one with the cpu controller, the one that
    accounts CPU (the same on v2 and with ``cpu,cpuacct`` mounted together)."""

    cpu: Path
    cpu_v2: bool
    accounting: Path
    accounting_v2: bool

    @classmethod
    def find(cls, mountinfo: Path | None = None) -> Hierarchies | str:
        """The hierarchies, or why there are none usable (a sentence)."""
        mountinfo = mountinfo or _MOUNTINFO
        try:
            lines = mountinfo.read_text().splitlines()
        except OSError as exc:
            return f"cannot read {mountinfo}: {exc}"
        v1: dict[str, Path] = {}
        v2: Path | None = None
        for line in lines:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            point = Path(fields[4].replace("\\040", " "))
            if tail[0] == "cgroup2":
                v2 = point
            elif tail[0] == "cgroup":
                for option in tail[2].split(","):
                    v1.setdefault(option, point)
        if v2 is not None and "cpu" in _read(v2 / "cgroup.controllers").split():
            return cls(v2, True, v2, True)
        if "cpu" in v1:
            if "cpuacct" in v1:
                return cls(v1["cpu"], False, v1["cpuacct"], False)
            if v2 is not None:  # a v2 group accounts CPU even without its cpu controller
                return cls(v1["cpu"], False, v2, True)
        return "no cgroup file system with the cpu controller is mounted"


class EnvironmentCgroup:
    """One environment's cgroups: the quota on the top group, a leaf per process kind."""

    def __init__(self, hierarchies: Hierarchies, name: str, vcpus: float | None) -> None:
        self._h = hierarchies
        self.name = name
        self.vcpus = vcpus
        self._tops = list(dict.fromkeys([hierarchies.cpu / name, hierarchies.accounting / name]))

    @classmethod
    def create(cls, vcpus: float | None, *, hierarchies: Hierarchies | None = None,
               label: str = "kafka-relay-sandbox") -> EnvironmentCgroup | str:
        """Make the groups and set the quota (``vcpus`` None: account only), or say why not."""
        found = hierarchies or Hierarchies.find()
        if isinstance(found, str):
            return found
        _remove_orphans(found, label)
        name = f"{label}-{os.getpid()}-{secrets.token_hex(4)}"
        group = cls(found, name, vcpus)
        try:
            if found.cpu_v2:
                _enable_cpu_controller(found.cpu)
            for top in group._tops:
                top.mkdir()
                for kind in KINDS:
                    (top / kind).mkdir()
            if vcpus is not None:
                cpu_top = found.cpu / name
                if found.cpu_v2:
                    (cpu_top / "cpu.max").write_text(f"{quota_us(vcpus)} {PERIOD_US}\n")
                else:
                    (cpu_top / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                    (cpu_top / "cpu.cfs_quota_us").write_text(f"{quota_us(vcpus)}\n")
        except OSError as exc:
            group.remove()
            return f"cannot create a cgroup under {found.cpu}: {exc}"
        return group

    def procs_files(self, kind: str) -> list[Path]:
        """The ``cgroup.procs`` files a process of ``kind`` joins."""
        return [top / _leaf(kind) / "cgroup.procs" for top in self._tops]

    def wrap(self, kind: str, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself (the same pid) into the groups."""
        files = " ".join(shlex.quote(str(f)) for f in self.procs_files(kind))
        script = f'for f in {files}; do echo $$ > "$f" || exit 125; done; exec "$@"'
        return ["/bin/sh", "-c", script, "sandbox-cgroup", *argv]

    def pids(self) -> list[int]:
        """Every process in the environment's groups (any hierarchy)."""
        found: set[int] = set()
        for top in self._tops:
            for kind in KINDS:
                found.update(int(p) for p in _read(top / kind / "cgroup.procs").split())
        return sorted(found)

    def quota(self) -> str:
        """The quota the kernel holds for the top group, as written in its file."""
        top = self._h.cpu / self.name
        if self._h.cpu_v2:
            return _read(top / "cpu.max").strip()
        quota, period = (_read(top / f).strip() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        return f"{quota} {period}"

    def usage(self) -> CpuTimes:
        top = self._h.accounting / self.name
        return CpuTimes(*(self._usage_ms(top / _leaf(kind)) for kind in ("runtime", "extension")))

    def _usage_ms(self, group: Path) -> float:
        if self._h.accounting_v2:
            stat = dict(line.split() for line in _read(group / "cpu.stat").splitlines()
                        if len(line.split()) == 2)
            return int(stat.get("usage_usec", 0)) / 1000
        # cpuacct.usage counts user + sys in ns (cpuacct.stat's ticks are 10 ms coarse)
        text = _read(group / "cpuacct.usage").strip()
        return int(text) / 1e6 if text.isdigit() else 0.0

    def remove(self, *, attempts: int = 50) -> bool:
        """SIGKILL anything still inside, then remove the groups (bounded retries: the kernel
        lets go of a group shortly after its last process was reaped). True when gone."""
        for _ in range(attempts):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            left = [d for d in self._dirs() if d.exists()]
            for directory in left:
                with contextlib.suppress(FileNotFoundError, OSError):
                    directory.rmdir()
            if not any(d.exists() for d in self._dirs()):
                return True
            time.sleep(0.02)
        return False

    def _dirs(self) -> Iterable[Path]:
        for top in self._tops:  # leaves before their parent
            yield from (top / kind for kind in KINDS)
            yield top


def _remove_orphans(found: Hierarchies, label: str) -> None:
    """Remove groups a killed sandbox left behind (its pid is gone): a crash must not
    leave the hierarchy growing."""
    for root in dict.fromkeys([found.cpu, found.accounting]):
        with contextlib.suppress(OSError):
            for top in root.glob(f"{label}-*-*"):
                owner = top.name.removeprefix(f"{label}-").split("-")[0]
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    EnvironmentCgroup(found, top.name, None).remove(attempts=3)


def _leaf(kind: str) -> str:
    return "runtime" if kind == "runtime" else "extensions"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _enable_cpu_controller(root: Path) -> None:
    """v2: children of ``root`` get the cpu controller only when its subtree enables it."""
    control = root / "cgroup.subtree_control"
    if "cpu" not in _read(control).split():
        control.write_text("+cpu\n")


def warn_once(reason: str) -> None:
    """Say once per process that environments run without a CPU quota, and why."""
    if _warned.is_set():
        return
    _warned.set()
    print(f"devtools.sandbox: WARNING: no CPU quota: {reason}. Environments get every core "
          "of this machine, unlike Lambda (1,769 MB = 1 vCPU): timings and billed durations "
          "are optimistic. Run as root on a host with the cgroup cpu controller to apply it.",
          file=sys.stderr, flush=True)


def proc_cpu_ms(pids: Iterable[int]) -> float:
    """Fallback accounting: user + sys of ``pids`` and their reaped children, in ms."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = read_stat(pid)
        if fields is not None:
            total += sum(int(v) for v in fields[UTIME:CSTIME + 1])  # children reaped included
    return total * 1000 / ticks
