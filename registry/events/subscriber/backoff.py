"""Riding out outages in the subscriber: the registry's dependency errors and backoff
(registry/transient.py, registry/backoff.py) with the subscriber's own timings."""

from __future__ import annotations

from registry.transient import DEPENDENCY_ERRORS

# Errors of a dependency, not of this code: wait and try again.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = DEPENDENCY_ERRORS
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
