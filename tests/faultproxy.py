"""A loopback TCP proxy that injects faults between a Kafka client and the broker.

It can add one-way latency per direction (mimicking a remote cluster: 10 ms
each way is a 20 ms round trip), hold traffic (pause/resume), cut every
connection and refuse new ones (cut/restore). It runs an asyncio loop in a
daemon thread so synchronous tests drive it with plain method calls.

Kafka clients learn broker addresses from metadata, so a broker behind the
proxy must advertise the proxy's port (``KafkaBroker(advertised_port=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")
_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        up_latency_ms: float = 0.0,
        down_latency_ms: float = 0.0,
    ) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        self._upstream = (up_host, int(up_port))
        self.host = host
        self.port = port
        self.up_latency_s = up_latency_ms / 1000
        self.down_latency_s = down_latency_ms / 1000
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control (any thread) -------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._init())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def set_latency(self, *, up_ms: float, down_ms: float) -> None:
        """One-way delays; the round trip grows by ``up_ms + down_ms``."""
        self.up_latency_s = up_ms / 1000
        self.down_latency_s = down_ms / 1000

    def pause(self) -> None:
        """Hold all traffic (connections stay open, bytes wait in the proxy)."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        self._call(self._set_flowing(True))

    def cut(self) -> None:
        """Close every connection and refuse new ones until ``restore()``."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    @property
    def active_connections(self) -> int:
        return len(self._conns) // 2

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- loop side --------------------------------------------------------------

    async def _init(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()
        for task in list(self._tasks):
            task.cancel()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1)

    async def _shutdown(self) -> None:
        await self._cut()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            c_writer.transport.abort()
            return
        self.stats.connections += 1
        self._conns.update((c_writer, u_writer))
        for src, dst, upward in ((c_reader, u_writer, True), (u_reader, c_writer, False)):
            task = asyncio.ensure_future(self._pipe(src, dst, upward=upward))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        # Reader stamps each chunk; the writer releases it at stamp + latency,
        # so latency delays bytes without limiting throughput.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer_task = asyncio.ensure_future(self._deliver(queue, dst, upward=upward))
        self._tasks.add(writer_task)
        writer_task.add_done_callback(self._tasks.discard)
        try:
            while chunk := await src.read(_CHUNK):
                await queue.put((time.monotonic(), chunk))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            await queue.put((time.monotonic(), b""))
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer_task

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                stamp, chunk = await queue.get()
                delay = stamp + (self.up_latency_s if upward else self.down_latency_s)
                wait = delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not chunk:
                    break
                dst.write(chunk)
                await dst.drain()
                if upward:
                    self.stats.bytes_up += len(chunk)
                else:
                    self.stats.bytes_down += len(chunk)
        finally:
            self._conns.discard(dst)
            dst.transport.abort()
