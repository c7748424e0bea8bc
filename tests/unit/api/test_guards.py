"""Bearer tokens and the token bucket, as plain objects."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from training_api.auth import Authenticator
from training_api.errors import ApiError
from training_api.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_token_names_its_client():
    auth = Authenticator([SecretStr("alpha-token"), SecretStr("beta-token")])

    assert auth.client_of("Bearer alpha-token") == "token-0"
    assert auth.client_of("bearer   beta-token ") == "token-1"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Token alpha-token", "Bearer alpha", "alpha-token"]
)
def test_anything_else_is_401(header):
    auth = Authenticator([SecretStr("alpha-token")])

    with pytest.raises(ApiError) as caught:
        auth.client_of(header)

    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    assert "alpha-token" not in caught.value.message


def test_anonymous_only_when_no_token_is_configured():
    assert Authenticator([], allow_anonymous=True).client_of(None) is None
    with pytest.raises(ApiError):
        Authenticator([SecretStr("alpha-token")], allow_anonymous=True).client_of(None)


def test_bucket_allows_a_burst_then_refills_steadily():
    clock = Clock()
    limiter = RateLimiter(per_minute=3, clock=clock)

    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.retry_after("a") == 20  # one token every 20 s
    clock.now += 10
    assert limiter.retry_after("a") == 10
    clock.now += 10
    assert limiter.retry_after("a") == 0
    assert limiter.retry_after("b") == 0  # clients do not share a bucket


def test_idle_buckets_are_dropped_when_many_are_held(monkeypatch):
    clock = Clock()
    limiter = RateLimiter(per_minute=60, clock=clock)
    monkeypatch.setattr(RateLimiter, "MAX_BUCKETS", 3)
    for client in "abc":
        limiter.retry_after(client)
    clock.now += 120  # every bucket refilled: forgetting them changes nothing

    limiter.retry_after("d")

    assert set(limiter._buckets) == {"d"}
