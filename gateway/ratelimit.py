"""Requests per minute per caller (CONTRACT §11: `RATE_LIMIT`).

Fixed one-minute windows aligned on the clock, counted in this process's memory. Each
gateway process counts alone, so N gateways behind a load balancer admit up to N times
the limit to a caller that is spread across all of them. That is the price of keeping
the heartbeat path free of a round trip to a shared store; a caller pinned to one
gateway (keep-alive connections, as the agents' HTTP clients hold) meets the limit
exactly. Aligned windows let the whole table be dropped at once when a minute ends,
so memory stays bounded by the callers of one minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # Unix time (seconds) at which the window ends

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset).encode()),
        ]

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.reset - now))


class RateLimiter:
    """`hit(key)` counts one call of `key` and says whether it is within the limit."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}
        # Handlers run on the event loop, but a lock keeps the table safe if a caller
        # ever counts from a thread.
        self._lock = threading.Lock()

    def hit(self, key: str) -> Verdict:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        reset = (window + 1) * WINDOW_SECONDS
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
        return Verdict(count <= self.limit, self.limit, max(0, self.limit - count), reset)
