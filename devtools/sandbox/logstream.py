"""The environment's log stream (one file + memory) and the pumps that fill it.

Like CloudWatch, the stream holds each process's output line by line
(stdout and stderr merged) and the platform's own lines (START, END, REPORT,
...). The file has one message per line, no added timestamps, so the
``kafka_relay.tools.logs --file`` summariser reads it as it reads CloudWatch.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

_CHUNK = 65_536


class LogStream:
    def __init__(self, path: Path, *, echo: TextIO | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._echo = echo
        self._lines: list[str] = []
        self._cond = threading.Condition()

    def write(self, line: str) -> None:
        with self._cond:
            self._lines.append(line)
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()
            if self._echo is not None:
                self._echo.write(line + "\n")
            self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def wait_for(self, pattern: str, *, timeout: float, start: int = 0) -> str:
        """The first line from index ``start`` matching the regex; waits up to ``timeout`` s."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                for line in self._lines[index:]:
                    if regex.search(line):
                        return line
                index = len(self._lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no log line matched {pattern!r} within {timeout} s")
                self._cond.wait(remaining)

    def close(self) -> None:
        with self._cond:
            self._file.close()


class OutputPump:
    """Reads one process's merged output from a pipe and hands each line on."""

    def __init__(self, fd: int, on_line: Callable[[str], None], *, name: str) -> None:
        self._fd = fd
        self._on_line = on_line
        # Held from a read to its lines being handed on, so settled() never sees a
        # chunk that has left the pipe but not yet reached the stream.
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sandbox-log-{name}", daemon=True)

    def start(self) -> None:
        """Read from now on. The caller first makes whatever ``on_line`` needs: the process
        may have written already, and a pump whose ``on_line`` raises ends and closes the
        pipe, so the process's next write fails (Python exits 120 on it)."""
        self._thread.start()

    def settled(self) -> bool:
        """Nothing unread in the pipe and nothing half-handled: the stream is up to date."""
        with self._lock:
            if self._done.is_set():
                return True
            try:
                pending = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * 4)
            except OSError:
                return True
            return int(struct.unpack("i", pending)[0]) == 0

    def join(self, timeout: float) -> None:
        self._done.wait(timeout)

    def _run(self) -> None:
        partial = b""
        try:
            while True:
                select.select([self._fd], [], [])
                with self._lock:
                    chunk = os.read(self._fd, _CHUNK)
                    if not chunk:
                        break
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        self._on_line(line.rstrip(b"\r").decode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            with self._lock:
                if partial:
                    self._on_line(partial.decode("utf-8", "replace"))
                self._done.set()
                os.close(self._fd)
