"""A TLS + SASL front for the local Kafka broker, so tests can exercise SASL_SSL.

The test broker speaks plaintext only. This proxy terminates TLS (a throwaway
CA and server certificate from ``trustme``), performs the Kafka SASL exchange
itself (ApiVersions, SaslHandshake, SaslAuthenticate) for PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512 or OAUTHBEARER (``devtools.sasl_mechanisms``) and, once a client
has authenticated, pipes bytes to the broker untouched. Like
``devtools.faultproxy`` it runs an asyncio loop in a daemon thread.

Kafka clients learn broker addresses from metadata, so the broker behind the
proxy must advertise the proxy's port; ``sasl_broker()`` wires that up::

    with sasl_broker() as sasl:
        producer = Producer(sasl.proxy.client_config())
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import trustme
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devtools.kafka_broker import KafkaBroker, free_port
from devtools.sasl_mechanisms import (
    MECHANISMS,
    OAUTHBEARER,
    PLAIN,
    Exchange,
    Step,
    TokenVerifier,
    exchange_for,
)
from devtools.tcpproxy import LoopbackProxy

#: librdkafka settings as confluent-kafka's constructors type them.
ClientConfig = dict[str, str | int | float | bool]

DEFAULT_USERNAME = "key"
DEFAULT_PASSWORD = "secret"

# Kafka API keys and error codes this proxy speaks (Kafka protocol guide).
API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
UNSUPPORTED_SASL_MECHANISM = 33
SASL_AUTHENTICATION_FAILED = 58

#: Version ranges advertised for the SASL APIs, i.e. what this proxy can answer.
SASL_API_VERSIONS = {API_SASL_HANDSHAKE: (0, 1), API_SASL_AUTHENTICATE: (0, 2)}
# Kafka brokers cap unauthenticated frames at this size (sasl.server.max.receive.size).
_MAX_PREAUTH_FRAME = 512 * 1024


class SaslProxyError(RuntimeError):
    """The SASL proxy was used wrongly; the message says what to do instead."""


class _ProtocolViolation(Exception):
    """A client or the broker sent something this proxy will not accept; close the connection."""


@dataclass
class SaslStats:
    connections: int = 0  # past the TLS handshake (when TLS is on)
    auth_succeeded: int = 0
    auth_failed: int = 0
    rejected: int = 0  # closed before authentication for a protocol violation


# -- wire codec ----------------------------------------------------------------


class _Reader:
    """Sequential reads of Kafka primitive types; running short is a protocol violation."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self._data):
            raise _ProtocolViolation(f"truncated field: wanted {size} bytes at {self.pos}")
        chunk = self._data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def rest(self) -> bytes:
        return self.take(len(self._data) - self.pos)

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise _ProtocolViolation("unsigned varint longer than 5 bytes")

    def nullable_string(self) -> str | None:
        size = self.int16()
        if size < 0:
            return None
        try:
            return self.take(size).decode()
        except UnicodeDecodeError as exc:
            raise _ProtocolViolation("string field is not UTF-8") from exc

    def compact_bytes(self) -> bytes:
        size = self.uvarint() - 1  # compact lengths are stored plus one (0 means null)
        return b"" if size < 0 else self.take(size)

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _compact_nullable_string(text: str | None) -> bytes:
    if text is None:
        return _uvarint(0)
    data = text.encode()
    return _uvarint(len(data) + 1) + data


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


class _RequestHeader(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int


def _flexible(api_key: int, api_version: int) -> bool:
    """Whether a request/response uses flexible encoding (tagged fields, compact types)."""
    return (api_key == API_VERSIONS and api_version >= 3) or (
        api_key == API_SASL_AUTHENTICATE and api_version >= 2
    )


def _read_request_header(reader: _Reader) -> _RequestHeader:
    header = _RequestHeader(reader.int16(), reader.int16(), reader.int32())
    reader.nullable_string()  # client_id: a classic string even in flexible headers
    if _flexible(header.api_key, header.api_version):
        reader.skip_tagged_fields()
    return header


def _with_sasl_apis(body: bytes, version: int) -> bytes:
    """An ApiVersions response body that advertises the proxy's SASL APIs.

    Entries the broker lists for the SASL keys are replaced (the proxy answers
    those, not the broker); every other byte is kept as the broker sent it.
    """
    reader = _Reader(body)
    if reader.int16() != 0:
        return body  # an error answer (e.g. UNSUPPORTED_VERSION) is always v0-shaped: pass it on
    flexible = version >= 3
    count = reader.uvarint() - 1 if flexible else reader.int32()
    entries: dict[int, bytes] = {}
    for _ in range(count):
        start = reader.pos
        api_key = reader.int16()
        reader.take(4)  # min and max version
        if flexible:
            reader.skip_tagged_fields()
        entries[api_key] = body[start : reader.pos]
    tail = reader.rest()  # throttle_time_ms and, when flexible, the tagged fields
    for api_key, (low, high) in SASL_API_VERSIONS.items():
        entries[api_key] = struct.pack(">hhh", api_key, low, high) + (b"\x00" if flexible else b"")
    counted = _uvarint(len(entries) + 1) if flexible else struct.pack(">i", len(entries))
    return body[:2] + counted + b"".join(entries[k] for k in sorted(entries)) + tail


def _authenticate_response(header: _RequestHeader, step: Step) -> bytes:
    version, error = header.api_version, step.error
    code = 0 if error is None else SASL_AUTHENTICATION_FAILED
    if version >= 2:
        body = struct.pack(">h", code) + _compact_nullable_string(error)
        body += _uvarint(len(step.reply) + 1) + step.reply  # the server's challenge, if any
        body += struct.pack(">q", 0) + b"\x00"  # session_lifetime_ms 0: no re-authentication
        header_bytes = struct.pack(">i", header.correlation_id) + b"\x00"
    else:
        body = struct.pack(">h", code)
        body += struct.pack(">h", -1) if error is None else _string(error)
        body += struct.pack(">i", len(step.reply)) + step.reply
        if version >= 1:
            body += struct.pack(">q", 0)
        header_bytes = struct.pack(">i", header.correlation_id)
    return _frame(header_bytes + body)


# -- the proxy -----------------------------------------------------------------


class SaslProxy(LoopbackProxy):
    """A SASL (and by default TLS) terminating proxy in front of one broker.

    ``users`` maps usernames to passwords (default ``key``/``secret``) for PLAIN and
    SCRAM; ``mechanisms`` are those it accepts (the first is what ``client_config``
    uses); OAUTHBEARER needs ``verify_token``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        users: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        mechanisms: Sequence[str] = (PLAIN,),
        verify_token: TokenVerifier | None = None,
    ) -> None:
        super().__init__(upstream, host=host, port=port, name="saslproxy")
        unknown = [m for m in mechanisms if m not in MECHANISMS]
        if not mechanisms or unknown:
            raise SaslProxyError(f"mechanisms {list(mechanisms)!r}: use some of {MECHANISMS}")
        if OAUTHBEARER in mechanisms and verify_token is None:
            raise SaslProxyError("OAUTHBEARER needs verify_token, the check of a bearer token")
        self.mechanisms = tuple(mechanisms)
        self.verify_token = verify_token
        self.users = dict(users) if users is not None else {DEFAULT_USERNAME: DEFAULT_PASSWORD}
        self.tls = tls
        self.stats = SaslStats()
        self._cert_dir: Path | None = None
        self._context: ssl.SSLContext | None = None

    # -- control (any thread) -------------------------------------------------

    @property
    def security_protocol(self) -> str:
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"

    @property
    def ca_path(self) -> Path:
        """PEM file of the CA that signed the proxy's certificate (``ssl.ca.location``)."""
        if not self.tls:
            raise SaslProxyError("this proxy runs without TLS (tls=False): it has no CA file")
        if self._cert_dir is None:
            raise SaslProxyError("the CA file exists only while the proxy runs: start() it first")
        return self._cert_dir / "ca.pem"

    def client_config(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        mechanism: str | None = None,
    ) -> ClientConfig:
        """librdkafka settings that reach the broker through this proxy.

        Credentials default to the first configured user; pass others to fail on purpose.
        For OAUTHBEARER the caller adds its ``oauth_cb``.
        """
        mechanism = mechanism or self.mechanisms[0]
        config: ClientConfig = {
            "bootstrap.servers": self.address,
            "security.protocol": self.security_protocol,
            "sasl.mechanism": mechanism,
        }
        if mechanism != OAUTHBEARER:
            if username is None:
                username = next(iter(self.users), DEFAULT_USERNAME)
            if password is None:
                password = self.users.get(username, "")
            config["sasl.username"] = username
            config["sasl.password"] = password
        if self.tls:
            config["ssl.ca.location"] = str(self.ca_path)
        return config

    def start(self) -> SaslProxy:
        self._context = self._server_context() if self.tls else None
        try:
            return super().start()
        except OSError as exc:
            self.stop()
            raise SaslProxyError(
                f"the SASL proxy cannot listen on {self.address} ({exc.strerror}): "
                "stop whatever uses that port or pass port=0 for a free one"
            ) from exc

    def stop(self) -> None:
        super().stop()
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None

    def _server_context(self) -> ssl.SSLContext:
        ca = trustme.CA()
        cert = ca.issue_cert(*dict.fromkeys([self.host, "127.0.0.1", "localhost"]))
        self._cert_dir = Path(tempfile.mkdtemp(prefix="saslproxy-"))
        ca.cert_pem.write_to_path(str(self._cert_dir / "ca.pem"))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    # -- loop side --------------------------------------------------------------

    async def _started(self) -> None:
        await self._listen(self._context)

    async def _handshake(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> bool:
        self.stats.connections += 1
        try:
            return await self._authenticate(c_reader, c_writer, u_reader, u_writer)
        except _ProtocolViolation:
            self.stats.rejected += 1
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        return False

    async def _authenticate(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> bool:
        """Run the SASL exchange; True once the client is authenticated."""
        exchange: Exchange | None = None  # set once a mechanism is agreed
        raw_tokens = False  # after SaslHandshake v0 the tokens come as bare frames
        while True:
            payload = await _read_frame(c_reader)
            if raw_tokens and exchange is not None:
                step = exchange.step(payload)
                if step.error is None:
                    c_writer.write(_frame(step.reply))  # the server's token (PLAIN: empty)
                    await c_writer.drain()
                if step.done or step.error is not None:
                    return self._counted(step.error)
                continue
            reader = _Reader(payload)
            header = _read_request_header(reader)
            if header.api_key == API_VERSIONS:
                c_writer.write(await self._broker_api_versions(header, payload, u_reader, u_writer))
            elif header.api_key == API_SASL_HANDSHAKE and header.api_version <= 1:
                mechanism = reader.nullable_string()
                agreed = mechanism in self.mechanisms
                exchange = (
                    exchange_for(str(mechanism), users=self.users, verify_token=self.verify_token)
                    if agreed
                    else None
                )
                body = struct.pack(">hi", 0 if agreed else UNSUPPORTED_SASL_MECHANISM,
                                   len(self.mechanisms))
                body += b"".join(_string(name) for name in self.mechanisms)
                c_writer.write(_frame(struct.pack(">i", header.correlation_id) + body))
                raw_tokens = agreed and header.api_version == 0
            elif (
                header.api_key == API_SASL_AUTHENTICATE
                and header.api_version <= 2
                and exchange is not None
            ):
                token = (
                    reader.compact_bytes()
                    if header.api_version >= 2
                    else reader.take(reader.int32())
                )
                step = exchange.step(token)
                c_writer.write(_authenticate_response(header, step))
                await c_writer.drain()
                if step.done or step.error is not None:
                    return self._counted(step.error)
            else:
                raise _ProtocolViolation(
                    f"API key {header.api_key} v{header.api_version} before authentication"
                )
            await c_writer.drain()

    def _counted(self, error: str | None) -> bool:
        if error is None:
            self.stats.auth_succeeded += 1
            return True
        self.stats.auth_failed += 1
        return False

    @staticmethod
    async def _broker_api_versions(
        header: _RequestHeader,
        request: bytes,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> bytes:
        """The broker's answer to the client's own ApiVersions request, plus the SASL APIs."""
        u_writer.write(_frame(request))
        await u_writer.drain()
        response = await _read_frame(u_reader)
        reader = _Reader(response)
        if reader.int32() != header.correlation_id:
            raise _ProtocolViolation("the broker answered ApiVersions with another correlation id")
        # ApiVersions responses always use header v0 (no tagged fields), even when flexible.
        return _frame(response[:4] + _with_sasl_apis(reader.rest(), header.api_version))


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= _MAX_PREAUTH_FRAME:
        raise _ProtocolViolation(f"frame of {size} bytes before authentication")
    return await reader.readexactly(size)


# -- a broker reachable only through the proxy ------------------------------------


class SaslBroker(NamedTuple):
    """A dedicated broker behind a SASL proxy; unpacks as (listen_address, proxy, bootstrap)."""

    listen_address: str  # the broker itself: plaintext, but it advertises the proxy
    proxy: SaslProxy
    bootstrap: str  # the proxy: where SASL clients bootstrap

    def create_topic(self, name: str, *, partitions: int = 1) -> str:
        """Create ``name`` through the proxy (the broker's metadata only names the proxy)."""
        admin = AdminClient(self.proxy.client_config())
        future = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=10,
        )[name]
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise SaslProxyError(
                    f"could not create topic {name!r} through the SASL proxy: {exc}"
                ) from exc
        return name


@contextlib.contextmanager
def sasl_broker(
    *,
    users: Mapping[str, str] | None = None,
    tls: bool = True,
    mechanisms: Sequence[str] = (PLAIN,),
    verify_token: TokenVerifier | None = None,
) -> Iterator[SaslBroker]:
    """Its own broker advertising the proxy's port, and the proxy in front of it.

    The kafka-relay extension reaches it with ``KAFKA_BOOTSTRAP_SERVERS=<bootstrap>``,
    ``KAFKA_API_KEY``/``KAFKA_API_SECRET`` (a user from ``users``) and
    ``KAFKA_PRODUCER_SSL_CA_LOCATION=<proxy.ca_path>``.
    """
    proxy_port = free_port()
    with (
        KafkaBroker(advertised_port=proxy_port) as broker,
        SaslProxy(broker.listen_address, users=users, port=proxy_port, tls=tls,
                  mechanisms=mechanisms, verify_token=verify_token) as proxy,
    ):
        yield SaslBroker(broker.listen_address, proxy, proxy.address)
