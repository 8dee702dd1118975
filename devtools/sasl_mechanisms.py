"""Server sides of the SASL mechanisms the test proxy speaks.

PLAIN (RFC 4616), SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802 / RFC 7677, as Kafka
uses them: no channel binding, 4096 iterations) and OAUTHBEARER (RFC 7628, the
bearer token handed to a verifier). One ``Exchange`` per connection; each client
message is one ``step`` whose answer says what to send back and whether the
exchange is over.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

PLAIN = "PLAIN"
SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_512 = "SCRAM-SHA-512"
OAUTHBEARER = "OAUTHBEARER"
SCRAM_HASHES = {SCRAM_SHA_256: "sha256", SCRAM_SHA_512: "sha512"}
MECHANISMS = (PLAIN, SCRAM_SHA_256, SCRAM_SHA_512, OAUTHBEARER)
#: Kafka's minimum (and librdkafka's expectation) for SCRAM iterations.
SCRAM_ITERATIONS = 4096
INVALID_CREDENTIALS = "Authentication failed: Invalid username or password"

#: Checks a bearer token: None when it is accepted, else why not.
TokenVerifier = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Step:
    reply: bytes = b""
    done: bool = True
    error: str | None = None  # set: the exchange failed


class Exchange(Protocol):
    def step(self, token: bytes) -> Step: ...


class PlainExchange:
    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = users

    def step(self, token: bytes) -> Step:
        parts = token.split(b"\x00")
        if len(parts) != 3:
            return Step(error="malformed SASL/PLAIN token: expected authzid\\0username\\0password")
        try:
            authzid, username, password = (part.decode() for part in parts)
        except UnicodeDecodeError:
            return Step(error="malformed SASL/PLAIN token: not UTF-8")
        if authzid and authzid != username:
            return Step(error="authorization id must be empty or equal to the username")
        if self._users.get(username) != password:
            return Step(error=INVALID_CREDENTIALS)
        return Step()


def _attributes(message: str) -> dict[str, str]:
    """SCRAM's ``k=v,k=v`` attributes (values may contain '=')."""
    found: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ValueError(f"malformed SCRAM attribute {part!r}")
        found.setdefault(key, value)
    return found


def _saslname(name: str) -> str:
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ValueError("malformed SCRAM username escape")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramExchange:
    """The server's two steps: client-first -> server-first, client-final -> server-final."""

    def __init__(
        self, users: Mapping[str, str], mechanism: str, *, nonce: Callable[[], str] | None = None
    ) -> None:
        self._users = users
        self._hash = SCRAM_HASHES[mechanism]
        self._nonce = nonce or (lambda: secrets.token_urlsafe(18))
        self._expect: tuple[str, str, str, bytes] | None = None  # gs2, bare, server-first, key

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()

    def step(self, token: bytes) -> Step:
        try:
            text = token.decode()
            return self._first(text) if self._expect is None else self._final(text)
        except (UnicodeDecodeError, ValueError) as exc:
            return Step(error=f"malformed SCRAM message: {exc}")

    def _first(self, text: str) -> Step:
        cbind, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if cbind not in ("n", "y"):
            raise ValueError("channel binding is not supported: use gs2 header 'n,,'")
        attributes = _attributes(bare)
        username, client_nonce = _saslname(attributes.get("n", "")), attributes.get("r", "")
        password = self._users.get(username)
        if password is None or not client_nonce:
            return Step(error=INVALID_CREDENTIALS)
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac(self._hash, password.encode(), salt, SCRAM_ITERATIONS)
        server_first = (f"r={client_nonce}{self._nonce()},s={base64.b64encode(salt).decode()},"
                        f"i={SCRAM_ITERATIONS}")
        self._expect = (f"{cbind},{authzid},", bare, server_first, salted)
        return Step(reply=server_first.encode(), done=False)

    def _final(self, text: str) -> Step:
        assert self._expect is not None
        gs2, bare, server_first, salted = self._expect
        without_proof, sep, proof_text = text.rpartition(",p=")
        attributes = _attributes(without_proof) if sep else {}
        if attributes.get("c") != base64.b64encode(gs2.encode()).decode():
            return Step(error="SCRAM channel binding does not match the gs2 header")
        if attributes.get("r") != _attributes(server_first)["r"]:
            return Step(error="SCRAM nonce does not match the server's")
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        signature = self._hmac(stored_key, auth_message)
        proof = base64.b64decode(proof_text, validate=True)
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        if len(proof) != len(signature) or not hmac.compare_digest(
            hashlib.new(self._hash, recovered).digest(), stored_key
        ):
            return Step(error=INVALID_CREDENTIALS)
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return Step(reply=b"v=" + base64.b64encode(server_signature))


class OAuthBearerExchange:
    """RFC 7628 client response ``n,,\\x01auth=Bearer <token>\\x01\\x01``; the token goes to
    ``verify``."""

    def __init__(self, verify: TokenVerifier) -> None:
        self._verify = verify

    def step(self, token: bytes) -> Step:
        try:
            gs2, *pairs = token.decode().split("\x01")
        except UnicodeDecodeError:
            return Step(error="malformed OAUTHBEARER message: not UTF-8")
        if not gs2.startswith(("n,", "y,")):
            return Step(error="malformed OAUTHBEARER message: no gs2 header")
        auth = next((p.removeprefix("auth=") for p in pairs if p.startswith("auth=")), "")
        scheme, _, bearer = auth.partition(" ")
        if scheme.lower() != "bearer" or not bearer:
            return Step(error="OAUTHBEARER message carries no 'auth=Bearer <token>'")
        return Step(error=self._verify(bearer))


def exchange_for(
    mechanism: str, *, users: Mapping[str, str], verify_token: TokenVerifier | None
) -> Exchange:
    if mechanism == PLAIN:
        return PlainExchange(users)
    if mechanism in SCRAM_HASHES:
        return ScramExchange(users, mechanism)
    if mechanism == OAUTHBEARER and verify_token is not None:
        return OAuthBearerExchange(verify_token)
    raise ValueError(f"no server side for SASL mechanism {mechanism!r}")
