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
import time
from dataclasses import dataclass

from devtools.tcpproxy import CHUNK, LoopbackProxy


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy(LoopbackProxy):
    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        up_latency_ms: float = 0.0,
        down_latency_ms: float = 0.0,
    ) -> None:
        super().__init__(upstream, host=host, port=port, name="faultproxy")
        self.up_latency_s = up_latency_ms / 1000
        self.down_latency_s = down_latency_ms / 1000
        self.stats = ProxyStats()
        self._flowing: asyncio.Event | None = None

    # -- control (any thread) -------------------------------------------------

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
        self._call(self._close_all())

    def restore(self) -> None:
        self._call(self._listen())

    def reset(self) -> None:
        """No faults left: listening, flowing, no latency, no connection from before kept
        (one proxy can then serve test after test)."""
        self.set_latency(up_ms=0, down_ms=0)
        self.restore()
        self.resume()
        self.drop_connections()

    # -- loop side --------------------------------------------------------------

    async def _started(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await super()._started()

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _handshake(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> bool:
        self.stats.connections += 1
        return True

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        # Reader stamps each chunk; the writer releases it at stamp + latency,
        # so latency delays bytes without limiting throughput.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer_task = self._spawn(self._deliver(queue, dst, upward=upward))
        try:
            while chunk := await src.read(CHUNK):
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
