"""The gateway's small parts on their own: the rate limiter's windows, the bearer
header, and the settings' bounds (a revoked token must be refused within 5 s)."""

from __future__ import annotations

import pytest

from gateway.auth import bearer_token
from gateway.ratelimit import RateLimiter
from registry.config import load


def test_rate_limit_windows_are_per_key_and_aligned_on_the_minute():
    now = [120.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    verdicts = [limiter.hit("a") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    assert {v.reset for v in verdicts} == {180}
    assert verdicts[-1].retry_after(now[0]) == 60
    assert limiter.hit("b").allowed  # another caller, another budget
    now[0] = 179.5
    assert limiter.hit("a").retry_after(now[0]) == 1  # never 0: the client must wait
    now[0] = 180.0  # a new window: everyone starts again
    fresh = limiter.hit("a")
    assert (fresh.allowed, fresh.remaining, fresh.reset) == (True, 2, 240)


def test_bearer_header():
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in ("Basic abc", "Bearer", "Bearer ", "abc", ""):
        with pytest.raises(ValueError):
            bearer_token(bad)


def test_gateway_settings_and_their_bounds():
    defaults = load({})
    assert (defaults.gateway_host, defaults.gateway_port) == ("127.0.0.1", 8080)
    assert defaults.rate_limit == 600
    assert defaults.gateway_token_cache_seconds == 5.0
    assert defaults.gateway_heartbeat_batch_max_items == 500
    # Out of bounds falls back to the default, loudly, never a crash.
    bad = load(
        {
            "GATEWAY_TOKEN_CACHE_SECONDS": "30",
            "GATEWAY_HEARTBEAT_BATCH_MAX_ITEMS": "5000",
            "GATEWAY_PORT": "70000",
            "RATE_LIMIT": "0",
        }
    )
    assert bad.gateway_token_cache_seconds == 5.0
    assert bad.gateway_heartbeat_batch_max_items == 500
    assert bad.gateway_port == 8080
    assert bad.rate_limit == 600
    tuned = load({"GATEWAY_TOKEN_CACHE_SECONDS": "0", "RATE_LIMIT": "60"})
    assert (tuned.gateway_token_cache_seconds, tuned.rate_limit) == (0.0, 60)
