"""How long to wait after a dependency failed: one backoff for every caller.

Capped exponential backoff with jitter, reset by the first success. Each caller passes
its own timings (the event subscriber, the liveness listener, the heartbeat batcher
ride out the same outages at different paces); the jitter keeps several processes
from retrying in step. Celery's own task retries keep Celery's backoff
(`tasks/base.py`), whose policy lives in `registry/limits.py`.
"""

from __future__ import annotations

import random
import threading
import time


class Backoff:
    """Delays of `first`, twice `first`, four times `first`, … up to `cap`, each shortened by a random
    share of at most `jitter` (0.5: somewhere between half and all of it)."""

    def __init__(self, *, first: float, cap: float, jitter: float = 0.5) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self.failures += 1
        delay = min(self.cap, self.first * 2 ** (self.failures - 1))
        return delay * random.uniform(1.0 - self.jitter, 1.0)

    def wait(self, stop: threading.Event | None = None) -> float:
        """Wait the next delay (cut short when `stop` is set); returns it."""
        delay = self.next_delay()
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)
        return delay
