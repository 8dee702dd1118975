"""The handoff's sockets, bound on their own: on demand the extension binds them before it
tells Lambda it is ready (a taken port stays an init error) and the server and the ring
listener take them over once assembled (``server.HandoffServer``,
``ring_listener.RingListener``); a handler's connections meanwhile wait in the listen
backlog."""

import errno
import socket

from kafka_relay.config import Config
from kafka_relay.errors import ConfigError, PortInUseError, RelayError
from kafka_relay.observability.log import JsonLogger
from kafka_relay.ring import socket_address

# Connections the kernel queues while nothing accepts them: a burst of handlers' connects, or
# a handler's first requests while the extension is still assembling.
BACKLOG = 512


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``; the error names KAFKA_RELAY_PORT and the fix."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise _refused(host, port, exc) from exc
    return sock


def _refused(host: str, port: int, exc: OSError) -> RelayError:
    if exc.errno == errno.EADDRINUSE:
        return PortInUseError(
            f"handoff port {host}:{port} is already in use: set KAFKA_RELAY_PORT to a "
            "free port (the function reads the same variable)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConfigError(
            f"KAFKA_RELAY_PORT={port}: not allowed to listen on {host}:{port} ({exc.strerror})"
            ": ports below 1024 need privileges Lambda does not give; use a port from 1024 "
            "to 65535 (default 4195), the same for function and extension")
    return ConfigError(
        f"KAFKA_RELAY_PORT={port}: cannot listen on {host}:{port} ({exc}): set "
        "KAFKA_RELAY_PORT to a free port from 1024 to 65535")


def listen_ring(config: Config, logger: JsonLogger) -> socket.socket | None:
    """The ring transport's listening socket, or None (ring off, or the address taken:
    handlers then use HTTP, logged)."""
    if not config.ring:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.bind(socket_address(config.port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        logger.warning("ring.unavailable", error=str(exc),
                       hint="handlers hand records over HTTP instead")
        return None
    return sock
