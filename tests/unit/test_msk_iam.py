"""MSK IAM tokens: the provider caches, refreshes near expiry or on demand, never outlives the
credentials; the test front's verifier accepts the signer's tokens and nothing tampered or old."""

from __future__ import annotations

import base64
import time

import pytest

from devtools.msk_iam_verifier import KnownKey, MskIamVerifier
from kafka_relay.errors import AuthError, ConfigError
from kafka_relay.producer.msk_iam import AwsCredentials, MskIamTokenProvider, msk_signer

REGION = "eu-west-1"
CREDENTIALS = AwsCredentials("AKIATESTKEY", "test-secret-key", "test-session-token")
KEYS = {"AKIATESTKEY": KnownKey("test-secret-key", "test-session-token")}


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSigner:
    """Tokens valid for 900 s from the clock's now, like the MSK signer's."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0

    def __call__(self, region: str, credentials: AwsCredentials) -> tuple[str, int]:
        self.calls += 1
        return f"{region}:{credentials.access_key_id}:{self.calls}", int(
            (self.clock.now + 900) * 1000
        )


def provider(clock: FakeClock, credentials: AwsCredentials = CREDENTIALS
             ) -> tuple[MskIamTokenProvider, FakeSigner]:
    signer = FakeSigner(clock)
    return MskIamTokenProvider(region=REGION, credentials=lambda: credentials, signer=signer,
                               clock=clock), signer


def test_a_token_is_reused_until_the_margin_before_expiry_then_reminted() -> None:
    clock = FakeClock()
    tokens, signer = provider(clock)

    first = tokens("")  # oauth_cb's signature: the sasl.oauthbearer.config string
    clock.now += 839  # 61 s left: still fresh
    assert tokens("") == first
    clock.now += 1  # within the 60 s margin
    second = tokens("")

    assert first == (f"{REGION}:AKIATESTKEY:1", 1_800_000_900.0)
    assert second == (f"{REGION}:AKIATESTKEY:2", clock.now + 900)
    assert signer.calls == 2


def test_a_freeze_past_the_token_lifetime_gets_a_new_token_on_the_next_call() -> None:
    clock = FakeClock()
    tokens, _ = provider(clock)
    old, old_expiry = tokens("")

    clock.now += 3600  # frozen for an hour
    assert tokens.stale()
    new, new_expiry = tokens("")

    assert new != old
    assert new_expiry == clock.now + 900 > old_expiry


def test_refresh_mints_at_once_even_when_the_cached_token_is_fresh() -> None:
    clock = FakeClock()
    tokens, signer = provider(clock)
    first = tokens.token()

    assert not tokens.stale()
    assert tokens.refresh() != first
    assert tokens.token() == (f"{REGION}:AKIATESTKEY:2", clock.now + 900)
    assert signer.calls == tokens.minted == 2


def test_token_expiry_never_passes_the_credentials_expiry() -> None:
    clock = FakeClock()
    short = AwsCredentials("AKIATESTKEY", "s", "t", expiration=clock.now + 300)
    tokens, _ = provider(clock, short)

    assert tokens("")[1] == clock.now + 300
    clock.now += 300
    with pytest.raises(AuthError, match=r"credentials \(AKIATESTKEY\) expired at"):
        tokens("")


def test_region_and_credentials_must_be_given() -> None:
    with pytest.raises(ConfigError, match="AWS_REGION"):
        MskIamTokenProvider(region="", credentials=lambda: CREDENTIALS)
    given = AwsCredentials("AKIA1", "hunter2")
    assert (given.access_key_id, given.session_token, given.expiration) == ("AKIA1", None, None)
    assert "hunter2" not in repr(given)


def test_a_signer_failure_is_an_auth_error_naming_the_region() -> None:
    def broken(region: str, credentials: AwsCredentials) -> tuple[str, int]:
        raise ValueError("AWS Credentials can not be empty")

    tokens = MskIamTokenProvider(region=REGION, credentials=lambda: CREDENTIALS, signer=broken)
    with pytest.raises(AuthError, match=rf"could not sign an MSK IAM token in {REGION}"):
        tokens("")


# --- the real signer against the test front's verifier -------------------------------------


def _url(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _token(url: str) -> str:
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def test_the_msk_signers_token_is_accepted_and_expires_after_900_s() -> None:
    token, expiry_ms = msk_signer(REGION, CREDENTIALS)
    verifier = MskIamVerifier(REGION, KEYS)

    assert verifier(token) is None
    assert verifier.accepted == ["AKIATESTKEY"]
    assert _url(token).startswith(f"https://kafka.{REGION}.amazonaws.com/?Action=kafka-cluster")
    assert abs(expiry_ms / 1000 - (time.time() + 900)) < 120


@pytest.mark.parametrize(("change", "reason"), [
    (("Action=kafka-cluster%3AConnect", "Action=kafka-cluster%3AAlterCluster"), "action is"),
    (("X-Amz-Expires=900", "X-Amz-Expires=9000"), "signature does not match"),
    (("X-Amz-Security-Token=test-session-token", "X-Amz-Security-Token=other"),
     "session token does not belong"),
    (("X-Amz-Signature=", "X-Amz-Signature=0"), "signature does not match"),
])
def test_a_tampered_token_is_rejected(change: tuple[str, str], reason: str) -> None:
    token, _ = msk_signer(REGION, CREDENTIALS)
    old, new = change
    assert old in _url(token)
    verifier = MskIamVerifier(REGION, KEYS)

    refused = verifier(_token(_url(token).replace(old, new, 1)))

    assert refused is not None
    assert reason in refused
    assert verifier.accepted == []


def test_an_expired_a_foreign_or_a_wrongly_keyed_token_is_rejected() -> None:
    token, expiry_ms = msk_signer(REGION, CREDENTIALS)
    later = MskIamVerifier(REGION, KEYS, clock=lambda: expiry_ms / 1000 + 1)
    elsewhere = MskIamVerifier("us-east-1", KEYS)
    other_secret = MskIamVerifier(REGION, {"AKIATESTKEY": KnownKey("not-it",
                                                                   "test-session-token")})
    stranger = MskIamVerifier(REGION, {"AKIAOTHER": KnownKey("x")})

    assert "token expired 1 s ago" in (later(token) or "")
    assert "not for kafka.us-east-1.amazonaws.com" in (elsewhere(token) or "")
    assert "signature does not match" in (other_secret(token) or "")
    assert "unknown access key AKIATESTKEY" in (stranger(token) or "")
    assert "not base64url" in (MskIamVerifier(REGION, KEYS)("%%%") or "")


def test_a_short_lived_token_goes_stale_when_librdkafka_asks_for_a_new_one() -> None:
    clock = FakeClock()
    short = AwsCredentials("AKIATESTKEY", "s", "t", expiration=clock.now + 100)
    tokens, _ = provider(clock, short)
    tokens("")

    clock.now += 79  # librdkafka refreshes at 80% of the lifetime, not 60 s before expiry
    assert not tokens.stale()
    clock.now += 1
    assert tokens.stale()


def test_await_fresh_polls_until_librdkafka_has_fetched_a_new_token() -> None:
    clock = FakeClock()
    tokens, signer = provider(clock)
    tokens("")
    clock.now += 3600  # a freeze that outlived the token
    polls: list[float] = []

    def poll(timeout: float) -> None:  # librdkafka's refresh timer fires on the third poll
        polls.append(timeout)
        if len(polls) == 3:
            tokens("")

    assert tokens.await_fresh(poll)
    assert len(polls) == 3
    assert signer.calls == 2
    assert tokens.await_fresh(poll)  # already fresh: no polling
    assert len(polls) == 3


def test_await_fresh_gives_up_at_its_timeout_when_no_token_comes() -> None:
    clock = FakeClock()
    tokens, _ = provider(clock)
    tokens("")
    clock.now += 3600
    ticks = iter(range(1000))  # each look at the clock advances it a second
    polls: list[float] = []

    assert not tokens.await_fresh(polls.append, timeout_s=5, monotonic=lambda: next(ticks))
    assert len(polls) == 4  # at t=1..4; t=5 is the deadline
