"""Riding out outages: which errors are a dependency's, and how long to wait after one."""

from __future__ import annotations

import logging
import random
import threading
import time

import redis.exceptions
import sqlalchemy.exc

log = logging.getLogger("registry.events.subscriber")

# Errors of a dependency, not of this code: wait and try again.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0


class Backoff:
    """Capped exponential backoff with jitter, reset by the first success."""

    def __init__(self) -> None:
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def wait(self, exc: BaseException, stop: threading.Event | None) -> None:
        self.failures += 1
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (self.failures - 1))
        delay *= random.uniform(0.5, 1.0)  # several subscribers do not retry in step
        text = str(exc).strip()
        reason = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
        log.warning("event subscriber: %s; retrying in %.1f s", reason, delay)
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)
