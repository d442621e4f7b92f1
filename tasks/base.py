"""The plumbing every registry task shares: retries, refusals, one unit of work.

A task body is one line: `return run_message(Model, payload, domain_fn)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis.exceptions
import sqlalchemy.exc
from celery import Task
from pydantic import BaseModel

from registry.config import get_settings
from registry.ingestion.payloads import parse_payload
from registry.ingestion.registration import ConcurrentRegistration
from registry.limits import MAX_RETRIES, RETRY_BACKOFF, RETRY_BACKOFF_MAX, task_time_limits
from registry.outcomes import MessageRefused
from registry.redaction import redacted_exception
from registry.uow import UnitOfWork, unit_of_work

log = logging.getLogger(__name__)

# Failures of a dependency, not of the message: retried with backoff. Everything
# else (bad input, unauthorized) is answered at once and never retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # connection lost, server restarting, deadlock
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # connection pool exhausted
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConcurrentRegistration,
)

M = TypeVar("M", bound=BaseModel)


_SOFT_LIMIT, _HARD_LIMIT = task_time_limits(get_settings())


class RegistryTask(Task):
    """Base class: transient errors retry with exponential backoff and jitter."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = RETRY_BACKOFF
    retry_backoff_max = RETRY_BACKOFF_MAX
    retry_jitter = True
    # Security hardening (registry/limits.py): the retry span is bounded (about three
    # minutes of countdowns) so that it, plus the visibility timeout, makes the
    # redelivery window a registration's token answer is limited to; and a stuck task
    # is interrupted (soft) then killed (hard) before the broker's visibility timeout
    # could hand its message to a second worker. A killed task's message is
    # acknowledged as failed, not redelivered. Prefork pool only (Celery's limits).
    max_retries = MAX_RETRIES
    soft_time_limit = _SOFT_LIMIT
    time_limit = _HARD_LIMIT
    # The producer's argsrepr header may hold a token: redacted at receipt
    # (CONTRACT §4.1 step 8; registry/redaction.py).
    Request = "registry.redaction:RedactingRequest"


def run_message(
    model: type[M],
    payload: Any,
    handler: Callable[[UnitOfWork, M], dict[str, Any]],
) -> dict[str, Any]:
    """Validate, apply in one transaction, and answer; refusals change nothing."""
    try:
        message = parse_payload(model, payload)
        with unit_of_work() as uow:
            return handler(uow, message)
    except MessageRefused as refused:  # bad input (PayloadError) included
        return refused.as_result()
    except Exception as exc:
        # An exception's message reaches logs, task events and the result backend: one
        # quoting a token is replaced (CONTRACT §4.1 step 8; registry/redaction.py).
        clean = redacted_exception(exc)
        if clean is exc:
            raise
        raise clean from None
