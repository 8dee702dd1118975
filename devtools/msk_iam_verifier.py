"""Check MSK IAM OAUTHBEARER tokens the way an MSK broker does, for the test SASL front.

A token is the base64url (unpadded) text of a SigV4 query-presigned URL::

    https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect
        &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=<key>/<date>/<region>/
        kafka-cluster/aws4_request&X-Amz-Date=...&X-Amz-Expires=900
        &X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]&X-Amz-Signature=...
        &User-Agent=...   (added after signing, so not signed)

The signature is recomputed with botocore's own SigV4 code from the known secret
key of the access key in the token, over the same canonical request, and compared;
``X-Amz-Date`` + ``X-Amz-Expires`` against the (injectable) clock decides expiry.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACTION = "kafka-cluster:Connect"
SERVICE = "kafka-cluster"
#: SigV4 allows this much clock difference between signer and verifier.
MAX_SKEW_S = 300
_UNSIGNED = ("X-Amz-Signature", "User-Agent")
_URLSAFE = str.maketrans("-_", "+/")


class TokenRejected(ValueError):
    """Why a token is refused; the proxy sends the text back as the SASL error."""


@dataclass(frozen=True)
class KnownKey:
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    #: Temporary credentials' expiry (epoch s): AWS refuses what they signed after it.
    expires_at: float | None = None


@dataclass
class MskIamVerifier:
    """``verify_token`` for ``SaslProxy``: None for a valid token, else the reason."""

    region: str
    keys: Mapping[str, KnownKey]  # access key id -> its secret (and session token)
    clock: Callable[[], float] = time.time
    accepted: list[str] = field(default_factory=list)  # access key ids, in order
    rejected: list[str] = field(default_factory=list)  # reasons, in order

    def __call__(self, token: str) -> str | None:
        try:
            self.accepted.append(self.check(token))
            return None
        except TokenRejected as exc:
            self.rejected.append(str(exc))
            return f"MSK IAM authentication failed: {exc}"

    def check(self, token: str) -> str:
        """The access key id the token was signed with; TokenRejected if it is not valid."""
        url = _decode(token)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc, parts.path) != (
            "https", f"kafka.{self.region}.amazonaws.com", "/"
        ):
            raise TokenRejected(f"token is not for kafka.{self.region}.amazonaws.com")
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if params.get("Action") != ACTION:
            raise TokenRejected(f"token action is {params.get('Action')!r}, not {ACTION}")
        if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            raise TokenRejected("token is not signed with AWS4-HMAC-SHA256")
        key_id, date, region, service, terminator = _credential_scope(params)
        key = self.keys.get(key_id)
        if key is None:
            raise TokenRejected(f"unknown access key {key_id}")
        if (region, service, terminator) != (self.region, SERVICE, "aws4_request"):
            raise TokenRejected(f"credential scope {region}/{service} is not "
                                f"{self.region}/{SERVICE}")
        if key.session_token is not None and params.get("X-Amz-Security-Token") != (
            key.session_token
        ):
            raise TokenRejected("session token does not belong to the access key")
        signed_at, expires = _validity(params, date)
        now = self.clock()
        if now > signed_at + expires:
            raise TokenRejected(f"token expired {now - signed_at - expires:.0f} s ago")
        if key.expires_at is not None and now > key.expires_at:
            raise TokenRejected(f"the credentials of {key_id} that signed the token expired "
                                f"{now - key.expires_at:.0f} s ago")
        if signed_at > now + MAX_SKEW_S:
            raise TokenRejected("token is signed in the future")
        expected = _signature(parts.query, parts.netloc, key_id, key, region=self.region,
                              params=params)
        if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
            raise TokenRejected("signature does not match")
        return key_id


def _decode(token: str) -> str:
    try:
        padded = token.translate(_URLSAFE) + "=" * (-len(token) % 4)
        return base64.b64decode(padded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise TokenRejected("token is not base64url text") from exc


def _credential_scope(params: Mapping[str, str]) -> tuple[str, str, str, str, str]:
    scope = params.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5:
        raise TokenRejected("X-Amz-Credential is not key/date/region/service/aws4_request")
    return scope[0], scope[1], scope[2], scope[3], scope[4]


def _validity(params: Mapping[str, str], scope_date: str) -> tuple[float, int]:
    amz_date = params.get("X-Amz-Date", "")
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        expires = int(params.get("X-Amz-Expires", ""))
    except ValueError as exc:
        raise TokenRejected("X-Amz-Date or X-Amz-Expires is malformed") from exc
    if not amz_date.startswith(scope_date) or not 1 <= expires <= 604800:
        raise TokenRejected("X-Amz-Date does not match the credential scope, or bad expiry")
    return signed_at, expires


def _signature(query: str, host: str, key_id: str, key: KnownKey, *, region: str,
               params: Mapping[str, str]) -> str:
    """botocore's SigV4 query signature over the token's own (still encoded) parameters."""
    signed = "&".join(
        pair for pair in query.split("&") if unquote(pair.partition("=")[0]) not in _UNSIGNED
    )
    request = AWSRequest(method="GET", url=f"https://{host}/?{signed}")
    request.context["timestamp"] = params["X-Amz-Date"]
    auth = SigV4QueryAuth(Credentials(key_id, key.secret_access_key, key.session_token),
                          SERVICE, region, expires=int(params["X-Amz-Expires"]))
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))
