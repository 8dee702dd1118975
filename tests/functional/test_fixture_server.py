"""The fixture server answers like a real upstream: no Nagle delay on keep-alive replies."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from devtools import fixture_server
from devtools.fixture_server import FixtureServer


def test_every_connection_has_tcp_nodelay(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    setup = fixture_server._Handler.setup

    def recording_setup(handler: fixture_server._Handler) -> None:
        setup(handler)
        seen.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(fixture_server._Handler, "setup", recording_setup)
    with FixtureServer() as server:
        for _ in range(2):
            with urllib.request.urlopen(f"{server.url}/gamma/markets", timeout=10) as reply:
                assert reply.status == 200

    assert len(seen) == 2
    assert all(seen), "Nagle would hold each reply's body ~40 ms behind its headers"
