"""How long a message may live: time limits, the retry span and the redelivery window.

With the Redis broker, a message not acknowledged within CELERY_VISIBILITY_TIMEOUT is
delivered again, to any worker. So every task is stopped before that (the hard time
limit kills its pool process and the message is acknowledged as failed), and a
registration's "same message again" answer (CONTRACT §4.1 step 7) is honoured only
within the window in which a true redelivery or retry can arrive: the visibility
timeout plus the retry span.

The retry policy lives here (not in tasks/) because the domain needs the window it
implies; `tasks.base.RegistryTask` applies it.
"""

from __future__ import annotations

import logging

from registry.config import Settings

log = logging.getLogger(__name__)

RETRY_BACKOFF = 1  # seconds before the first retry; doubled each time
RETRY_BACKOFF_MAX = 60
# Eight retries: about three minutes of countdowns (1+2+4+…+60+60 s), enough to ride
# out a database failover or restart; a longer outage fails the message loudly.
MAX_RETRIES = 8

_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def task_time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds: hard below the visibility timeout, soft below hard."""
    visibility = settings.celery_visibility_timeout
    hard: float = settings.task_time_limit
    if hard >= visibility:
        hard = max(1.0, visibility - 1.0)
        _warn_once(
            "hard",
            "TASK_TIME_LIMIT=%s is not below CELERY_VISIBILITY_TIMEOUT=%s (a message would "
            "run twice); using %.0f s",
            settings.task_time_limit,
            visibility,
            hard,
        )
    soft: float = settings.task_soft_time_limit
    if soft >= hard:
        soft = hard * 0.75
        _warn_once(
            "soft",
            "TASK_SOFT_TIME_LIMIT=%s is not below the hard limit (%.0f s); using %.1f s",
            settings.task_soft_time_limit,
            hard,
            soft,
        )
    return soft, hard


def retry_countdowns() -> list[float]:
    """The longest countdown before each retry (jitter only shortens them)."""
    return [float(min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2**n)) for n in range(MAX_RETRIES)]


def retry_span_seconds(settings: Settings) -> float:
    """Longest time from a message's first run to the start of its last retry."""
    _soft, hard = task_time_limits(settings)
    return sum(retry_countdowns()) + MAX_RETRIES * hard


def redelivery_window_seconds(settings: Settings) -> float:
    """How long after its first run the same message may still arrive again."""
    _soft, hard = task_time_limits(settings)
    return settings.celery_visibility_timeout + retry_span_seconds(settings) + hard
