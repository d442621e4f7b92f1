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


def test_token_cache_keeps_only_the_verdicts_of_one_period() -> None:
    """Expired verdicts are dropped as new ones are written: the cache holds the calls
    of one period (a fleet heartbeating every 30 s does not fill it with dead entries),
    and a verdict is never served past its period."""
    import asyncio
    import uuid

    from gateway.auth import TokenChecker

    now = [0.0]
    looked_up: list[set[uuid.UUID]] = []

    class Checker(TokenChecker):
        def _live(self, workspace_ids: set[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
            looked_up.append(set(workspace_ids))
            return {}  # no live token: a call without one is admitted (bootstrap)

    checker = Checker(None, 5.0, clock=lambda: now[0])  # type: ignore[arg-type]
    first = [uuid.uuid4() for _ in range(10)]

    async def calls(ids: list[uuid.UUID]) -> list[bool]:
        return [await checker.allowed(ws, None) for ws in ids]

    assert asyncio.run(calls(first)) == [True] * 10
    assert len(checker._cache) == 10
    assert asyncio.run(calls(first[:1])) == [True]  # cached: no lookup
    assert len(looked_up) == 10
    now[0] = 6.0  # every verdict expired
    assert asyncio.run(calls([uuid.uuid4()])) == [True]
    assert len(checker._cache) == 1
    assert asyncio.run(calls(first[:1])) == [True]  # looked up again, not served stale
    assert len(looked_up) == 12
