"""The skeleton the test proxies share: a loopback TCP proxy run by an asyncio loop in a
daemon thread, so synchronous tests drive it with plain method calls.

Subclasses decide what happens on a new connection (``_handshake``) and how bytes
flow once it is established (``_pipe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from devtools.service import Service

_T = TypeVar("_T")
_P = TypeVar("_P", bound="LoopbackProxy")
CHUNK = 64 * 1024


class LoopbackProxy(Service):
    def __init__(self, upstream: str, *, host: str, port: int, name: str) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        self._upstream = (up_host, int(up_port))
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self: _P) -> _P:
        self._thread.start()
        self._call(self._started())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


    def drop_connections(self) -> int:
        """Abort every open connection but keep listening (as a broker closes sessions whose
        credentials expired); how many were dropped."""
        return self._call(self._drop_all())

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- loop side --------------------------------------------------------------

    async def _started(self) -> None:
        """Runs on the loop before the first connection: listen."""
        await self._listen()

    async def _listen(self, context: ssl.SSLContext | None = None) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, ssl=context, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _drop_all(self) -> int:
        dropped = list(self._conns)
        for writer in dropped:
            writer.transport.abort()
        self._conns.clear()
        return len(dropped)

    async def _close_all(self) -> None:
        """Stop listening, drop every connection and the tasks moving their bytes."""
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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self._conns.add(c_writer)
        try:
            u_reader, u_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            self._close(c_writer)
            return
        self._conns.add(u_writer)
        if not await self._handshake(c_reader, c_writer, u_reader, u_writer):
            self._close(c_writer)
            self._close(u_writer)
            return
        for src, dst, upward in ((c_reader, u_writer, True), (u_reader, c_writer, False)):
            self._spawn(self._pipe(src, dst, upward=upward))

    async def _handshake(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> bool:
        """Whatever must happen before bytes flow freely; False closes both sides."""
        return True

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        try:
            while chunk := await src.read(CHUNK):
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self._close(dst)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        # close(), not abort(): a last answer (e.g. an authentication failure) may
        # still sit in the transport's buffer, and the client must read it.
        self._conns.discard(writer)
        writer.close()
