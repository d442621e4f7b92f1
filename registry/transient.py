"""Which failures are a dependency's, not the message's (CONTRACT §4: retries).

A database or Redis that cannot be reached, a pool exhausted, a concurrent
registration: the same message may well succeed later, so it is tried again with
backoff. Everything else (bad input, unauthorized) is an answer, never retried.
"""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc

from registry.outcomes import ConcurrentRegistration

# A dependency (PostgreSQL, Redis) is down or unreachable: the one definition every
# caller uses (tasks' retries, the event subscriber, the liveness listener, the board).
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # connection lost, server restarting, deadlock
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # connection pool exhausted
    redis.exceptions.ConnectionError,  # BusyLoadingError included
    redis.exceptions.TimeoutError,
)
# What a task retries: a dependency's failure, or a registration that raced another.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, ConcurrentRegistration)
