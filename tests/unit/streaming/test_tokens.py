"""Streaming tokens: single use, unguessable, expiring, bounded in number."""

from __future__ import annotations

import pytest

from crirt.errors import ResourceExhausted
from crirt.streaming.tokens import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_redeemed_once() -> None:
    cache: TokenCache[str] = TokenCache(ttl=60, capacity=10)
    token = cache.issue("request")
    assert cache.redeem(token) == "request"
    assert cache.redeem(token) is None
    assert cache.redeem("no-such-token") is None


def test_tokens_are_long_random_and_url_safe() -> None:
    cache: TokenCache[int] = TokenCache(ttl=60, capacity=1000)
    tokens = {cache.issue(i) for i in range(200)}
    assert len(tokens) == 200
    assert all(len(t) >= 32 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_a_token_expires_after_its_ttl() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(ttl=60, capacity=10, clock=clock)
    early, late = cache.issue("early"), None
    clock.now += 30
    late = cache.issue("late")
    clock.now += 30  # early is exactly 60 s old
    assert cache.redeem(early) is None
    assert cache.redeem(late) == "late"


def test_capacity_bounds_outstanding_tokens_and_expiry_frees_it() -> None:
    clock = Clock()
    cache: TokenCache[int] = TokenCache(ttl=60, capacity=3, clock=clock)
    first = cache.issue(1)
    cache.issue(2)
    cache.issue(3)
    with pytest.raises(ResourceExhausted, match="at most 3"):
        cache.issue(4)
    cache.redeem(first)
    cache.issue(5)
    clock.now += 61
    assert len(cache) == 0
    cache.issue(6)
