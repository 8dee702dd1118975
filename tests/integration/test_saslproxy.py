"""The SASL proxy gives the plaintext test broker a real SASL_SSL (PLAIN) front door."""

from __future__ import annotations

import base64
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    KafkaError,
    Message,
    Producer,
)

from devtools.kafka_broker import read_topic
from devtools.msk_iam_verifier import KnownKey, MskIamVerifier
from devtools.sasl_mechanisms import OAUTHBEARER, PLAIN, SCRAM_SHA_256, SCRAM_SHA_512
from devtools.saslproxy import (
    API_SASL_AUTHENTICATE,
    API_SASL_HANDSHAKE,
    API_VERSIONS,
    SASL_AUTHENTICATION_FAILED,
    UNSUPPORTED_SASL_MECHANISM,
    ClientConfig,
    SaslBroker,
    SaslProxyError,
    sasl_broker,
)
from kafka_relay.producer.msk_iam import (
    AwsCredentials,
    MskIamTokenProvider,
    Signer,
    msk_signer,
)

_METADATA = 3
_AUTH_ERRORS = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}


@pytest.fixture
def sasl() -> Iterator[SaslBroker]:
    with sasl_broker() as running:
        yield running


def _topic(sasl: SaslBroker) -> str:
    return sasl.create_topic(f"test.{uuid.uuid4().hex[:12]}")


def _producer(config: ClientConfig, **extra: object) -> Producer:
    return Producer({**config, "acks": "all", "enable.idempotence": True, **extra})


def _read_values(config: ClientConfig, topic: str, *, expected: int) -> list[bytes]:
    records = read_topic(str(config["bootstrap.servers"]), topic, expected=expected or None,
                         timeout=15, client_config=config)
    return [r.value or b"" for r in records]


def test_sasl_ssl_producer_delivers_and_consumer_reads_the_same_bytes(sasl: SaslBroker) -> None:
    topic = _topic(sasl)
    producer = _producer(sasl.proxy.client_config())
    results: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        results.append(err)

    values = [b"\x00binary\xff", "ünïcode".encode(), b"x" * 10_000]
    for value in values:
        producer.produce(topic, value=value, on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert results == [None, None, None]

    assert _read_values(sasl.proxy.client_config(), topic, expected=3) == values
    assert sasl.proxy.stats.auth_succeeded >= 2  # producer and consumer each authenticated
    assert sasl.proxy.stats.auth_failed == 0


def test_wrong_password_reports_an_authentication_error_and_delivers_nothing(
    sasl: SaslBroker,
) -> None:
    topic = _topic(sasl)
    errors: list[KafkaError] = []
    producer = _producer(
        sasl.proxy.client_config(password="wrong"),
        **{"error_cb": errors.append, "message.timeout.ms": 1000},
    )
    results: list[KafkaError | None] = []
    producer.produce(topic, value=b"never", on_delivery=lambda err, _msg: results.append(err))

    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    assert errors, "no error reached the error callback within 5 s"
    assert errors[0].code() in _AUTH_ERRORS
    assert "Invalid username or password" in errors[0].str()

    producer.flush(5)
    assert len(results) == 1
    assert results[0] is not None
    assert sasl.proxy.stats.auth_failed >= 1
    assert _read_values(sasl.proxy.client_config(), topic, expected=0) == []


def test_plaintext_client_cannot_produce_through_the_tls_listener(sasl: SaslBroker) -> None:
    topic = _topic(sasl)
    tls_sessions = sasl.proxy.stats.connections
    producer = Producer({"bootstrap.servers": sasl.bootstrap, "message.timeout.ms": 1000})
    results: list[KafkaError | None] = []
    producer.produce(topic, value=b"cleartext", on_delivery=lambda err, _msg: results.append(err))
    producer.flush(5)

    assert len(results) == 1
    assert results[0] is not None
    assert sasl.proxy.stats.connections == tls_sessions  # no TLS session was ever set up
    assert _read_values(sasl.proxy.client_config(), topic, expected=0) == []


def test_without_tls_the_proxy_speaks_sasl_plaintext() -> None:
    with sasl_broker(tls=False, users={"alice": "pw"}) as plain:
        config = plain.proxy.client_config()
        assert config["security.protocol"] == "SASL_PLAINTEXT"
        with pytest.raises(SaslProxyError, match="without TLS"):
            _ = plain.proxy.ca_path
        topic = plain.create_topic(f"test.{uuid.uuid4().hex[:12]}")
        producer = _producer(config)
        producer.produce(topic, value=b"plain-sasl")
        assert producer.flush(15) == 0
        assert _read_values(config, topic, expected=1) == [b"plain-sasl"]


# -- the wire exchange, byte by byte ----------------------------------------------


def _connect(sasl: SaslBroker) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(sasl.proxy.ca_path))
    raw = socket.create_connection((sasl.proxy.host, sasl.proxy.port), timeout=5)
    return context.wrap_socket(raw, server_hostname=sasl.proxy.host)


def _recv_exact(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        data += chunk
    return data


def _recv_frame(sock: ssl.SSLSocket) -> bytes:
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    return _recv_exact(sock, size)


def _request(
    sock: ssl.SSLSocket, api_key: int, version: int, body: bytes = b"", *, flexible: bool = False
) -> bytes:
    """Send one request (client id "t"); the response body, correlation id checked."""
    header = struct.pack(">hhih", api_key, version, 42, 1) + b"t" + (b"\x00" if flexible else b"")
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    response = _recv_frame(sock)
    assert struct.unpack(">i", response[:4])[0] == 42
    return response[4:]


def _string(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def _api_ranges(body: bytes, *, flexible: bool) -> dict[int, tuple[int, int]]:
    assert struct.unpack(">h", body[:2])[0] == 0
    if flexible:  # compact array: count + 1 as a varint (one byte for these sizes)
        count, pos, entry = body[2] - 1, 3, 7  # each entry ends with an empty tag buffer
    else:
        count, pos, entry = struct.unpack(">i", body[2:6])[0], 6, 6
    ranges = {}
    for i in range(count):
        key, low, high = struct.unpack(">hhh", body[pos + i * entry : pos + i * entry + 6])
        ranges[key] = (low, high)
    return ranges


@pytest.mark.parametrize(("version", "flexible"), [(0, False), (2, False), (3, True)])
def test_api_versions_answer_adds_the_sasl_apis_to_the_brokers_list(
    sasl: SaslBroker, version: int, flexible: bool
) -> None:
    body = b"\x02t\x021\x00" if flexible else b""  # v3+: client software name/version
    with _connect(sasl) as sock:
        ranges = _api_ranges(
            _request(sock, API_VERSIONS, version, body, flexible=flexible), flexible=flexible
        )
    assert ranges[API_SASL_HANDSHAKE] == (0, 1)
    assert ranges[API_SASL_AUTHENTICATE] == (0, 2)
    assert 0 in ranges  # Produce: the broker's own entries are kept
    assert ranges[API_VERSIONS][1] >= 3


def test_any_other_request_before_authentication_closes_the_connection(
    sasl: SaslBroker,
) -> None:
    with _connect(sasl) as sock, pytest.raises(ConnectionError):
        _request(sock, _METADATA, 0, struct.pack(">i", 0))
    assert sasl.proxy.stats.rejected == 1
    assert sasl.proxy.stats.auth_succeeded == 0


def test_unknown_mechanism_is_refused_and_authenticate_then_closes(sasl: SaslBroker) -> None:
    with _connect(sasl) as sock:
        answer = _request(sock, API_SASL_HANDSHAKE, 1, _string("SCRAM-SHA-256"))
        assert answer == struct.pack(">hi", UNSUPPORTED_SASL_MECHANISM, 1) + _string("PLAIN")
        token = b"\x00key\x00secret"
        with pytest.raises(ConnectionError):
            _request(sock, API_SASL_AUTHENTICATE, 1, struct.pack(">i", len(token)) + token)
    assert sasl.proxy.stats.auth_succeeded == 0


def _authenticate(sock: ssl.SSLSocket, version: int, password: str) -> tuple[int, bytes]:
    """Handshake v1 then SaslAuthenticate at ``version``: (error code, whole answer)."""
    assert _request(sock, API_SASL_HANDSHAKE, 1, _string("PLAIN"))[:2] == b"\x00\x00"
    token = b"\x00key\x00" + password.encode()
    if version >= 2:  # compact bytes + empty tag buffer; the answer's header has a tag buffer
        answer = _request(
            sock,
            API_SASL_AUTHENTICATE,
            version,
            bytes([len(token) + 1]) + token + b"\x00",
            flexible=True,
        )
        assert answer[0] == 0
        answer = answer[1:]
    else:
        answer = _request(
            sock, API_SASL_AUTHENTICATE, version, struct.pack(">i", len(token)) + token
        )
    return struct.unpack(">h", answer[:2])[0], answer


@pytest.mark.parametrize("version", [0, 1, 2])
def test_authenticate_failure_carries_the_reason_then_closes(
    sasl: SaslBroker, version: int
) -> None:
    with _connect(sasl) as sock:
        code, answer = _authenticate(sock, version, "nope")
        assert code == SASL_AUTHENTICATION_FAILED
        assert b"Invalid username or password" in answer
        with pytest.raises(ConnectionError):
            _recv_frame(sock)
    assert sasl.proxy.stats.auth_failed == 1


@pytest.mark.parametrize("version", [0, 1, 2])
def test_authenticate_success_then_pipes_to_the_broker(sasl: SaslBroker, version: int) -> None:
    with _connect(sasl) as sock:
        code, _ = _authenticate(sock, version, "secret")
        assert code == 0
        # Authenticated: requests now reach the broker untouched.
        assert _api_ranges(_request(sock, API_VERSIONS, 0), flexible=False)
    assert sasl.proxy.stats.auth_succeeded == 1


def test_handshake_v0_takes_a_bare_token_and_answers_with_an_empty_one(sasl: SaslBroker) -> None:
    with _connect(sasl) as sock:
        answer = _request(sock, API_SASL_HANDSHAKE, 0, _string("PLAIN"))
        assert answer == struct.pack(">hi", 0, 1) + _string("PLAIN")
        token = b"\x00key\x00secret"
        sock.sendall(struct.pack(">i", len(token)) + token)
        assert _recv_frame(sock) == b""  # PLAIN's empty server token
        assert _api_ranges(_request(sock, API_VERSIONS, 0), flexible=False)
    assert sasl.proxy.stats.auth_succeeded == 1


# -- SCRAM-SHA-256/512 ---------------------------------------------------------------


@pytest.mark.parametrize("mechanism", [SCRAM_SHA_256, SCRAM_SHA_512])
def test_scram_producer_delivers_and_wrong_password_is_refused(mechanism: str) -> None:
    with sasl_broker(mechanisms=(mechanism,), users={"alice": "s3cr=t,pw"}) as scram:
        topic = scram.create_topic(f"test.{uuid.uuid4().hex[:12]}")  # itself over SCRAM
        config = scram.proxy.client_config()
        assert config["sasl.mechanism"] == mechanism
        producer = _producer(config)
        producer.produce(topic, value=mechanism.encode())
        assert producer.flush(15) == 0
        assert _read_values(config, topic, expected=1) == [mechanism.encode()]
        succeeded = scram.proxy.stats.auth_succeeded

        errors: list[KafkaError] = []
        wrong = _producer(scram.proxy.client_config(password="s3cr=t,pX"),
                          **{"error_cb": errors.append, "message.timeout.ms": 1000})
        wrong.produce(topic, value=b"never")
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            wrong.poll(0.1)
        wrong.flush(5)

    assert succeeded >= 3  # admin, producer, consumer
    assert errors, "no error reached the error callback within 5 s"
    assert errors[0].code() in _AUTH_ERRORS
    assert "Invalid username or password" in errors[0].str()
    assert scram.proxy.stats.auth_failed >= 1
    assert scram.proxy.stats.auth_succeeded == succeeded  # the wrong password never got in


def test_a_plain_client_is_refused_by_a_scram_only_proxy_naming_what_it_accepts() -> None:
    with sasl_broker(mechanisms=(SCRAM_SHA_512, SCRAM_SHA_256)) as scram, _connect(scram) as sock:
        answer = _request(sock, API_SASL_HANDSHAKE, 1, _string("PLAIN"))
    assert answer == (struct.pack(">hi", UNSUPPORTED_SASL_MECHANISM, 2)
                      + _string(SCRAM_SHA_512) + _string(SCRAM_SHA_256))


# -- OAUTHBEARER with MSK IAM tokens ---------------------------------------------------------

MSK_REGION = "eu-west-1"
MSK_KEYS = {"AKIATESTKEY": KnownKey("test-secret-key", "test-session-token")}


def _msk_tokens(signer: Signer = msk_signer) -> MskIamTokenProvider:
    credentials = AwsCredentials("AKIATESTKEY", "test-secret-key", "test-session-token")
    return MskIamTokenProvider(region=MSK_REGION, credentials=lambda: credentials,
                               signer=signer)


def _tampered(region: str, credentials: AwsCredentials) -> tuple[str, int]:
    """A real token whose signed expiry was stretched after signing."""
    token, expiry_ms = msk_signer(region, credentials)
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    url = url.replace("X-Amz-Expires=900", "X-Amz-Expires=3600")
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("="), expiry_ms


def _first_error(producer: Producer, errors: list[KafkaError]) -> KafkaError | None:
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    return errors[0] if errors else None


def test_msk_iam_tokens_from_the_provider_authenticate_through_oauth_cb() -> None:
    verifier = MskIamVerifier(MSK_REGION, MSK_KEYS)
    tokens = _msk_tokens()
    with sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam:
        topic = iam.create_topic(f"test.{uuid.uuid4().hex[:12]}")  # over PLAIN
        config = iam.proxy.client_config(mechanism=OAUTHBEARER)
        producer = _producer(config, oauth_cb=tokens)
        producer.produce(topic, value=b"iam")
        assert producer.flush(15) == 0
        assert _read_values(iam.proxy.client_config(), topic, expected=1) == [b"iam"]

    assert verifier.accepted
    assert set(verifier.accepted) == {"AKIATESTKEY"}
    assert verifier.rejected == []
    assert tokens.minted == 1  # one token serves every connection until near its expiry


@pytest.mark.parametrize("case", ["tampered", "expired"])
def test_a_tampered_or_expired_msk_iam_token_is_refused(case: str) -> None:
    if case == "tampered":
        verifier, tokens = MskIamVerifier(MSK_REGION, MSK_KEYS), _msk_tokens(_tampered)
    else:  # the front's clock is past the token's 900 s lifetime
        verifier = MskIamVerifier(MSK_REGION, MSK_KEYS, clock=lambda: time.time() + 1000)
        tokens = _msk_tokens()
    with sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam:
        topic = iam.create_topic(f"test.{uuid.uuid4().hex[:12]}")
        errors: list[KafkaError] = []
        producer = _producer(iam.proxy.client_config(mechanism=OAUTHBEARER), oauth_cb=tokens,
                             error_cb=errors.append, **{"message.timeout.ms": 1000})
        producer.produce(topic, value=b"never")
        error = _first_error(producer, errors)
        producer.flush(5)
        stored = _read_values(iam.proxy.client_config(), topic, expected=0)

    assert error is not None, "no error reached the error callback within 5 s"
    assert error.code() in _AUTH_ERRORS
    reason = "signature does not match" if case == "tampered" else "token expired"
    assert reason in error.str()
    assert verifier.accepted == []
    assert stored == []


def test_tokens_capped_by_short_lived_credentials_are_refetched_and_delivery_continues() -> None:
    """Credentials that live 3 s cap each token at 3 s. confluent-kafka serves oauth_cb on
    its background thread, so librdkafka re-fetches by itself; past the first token's
    expiry await_fresh finds a fresh one and records still get through."""
    verifier = MskIamVerifier(MSK_REGION, MSK_KEYS)
    issued: list[float] = []

    def rotating() -> AwsCredentials:  # the role's credentials, renewed on every read
        issued.append(time.time())
        return AwsCredentials("AKIATESTKEY", "test-secret-key", "test-session-token",
                              expiration=issued[-1] + 3)

    tokens = MskIamTokenProvider(region=MSK_REGION, credentials=rotating)
    with sasl_broker(mechanisms=(PLAIN, OAUTHBEARER), verify_token=verifier) as iam:
        topic = iam.create_topic(f"test.{uuid.uuid4().hex[:12]}")
        producer = _producer(iam.proxy.client_config(mechanism=OAUTHBEARER), oauth_cb=tokens)
        producer.produce(topic, value=b"before")
        assert producer.flush(15) == 0
        first_expiry = issued[0] + 3
        time.sleep(max(0.0, first_expiry - time.time()) + 0.5)  # no poll from this thread

        assert tokens.await_fresh(producer.poll, timeout_s=5)
        producer.produce(topic, value=b"after")
        assert producer.flush(15) == 0
        values = _read_values(iam.proxy.client_config(), topic, expected=2)

    assert values == [b"before", b"after"]
    assert tokens.minted >= 2  # re-fetched past the first token's expiry
    assert tokens.token()[1] > first_expiry
    assert verifier.rejected == []
