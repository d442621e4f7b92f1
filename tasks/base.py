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

from registry.ingestion.payloads import parse_payload
from registry.ingestion.registration import ConcurrentRegistration
from registry.outcomes import MessageRefused
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


class RegistryTask(Task):
    """Base class: transient errors retry with exponential backoff and jitter."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 30  # about half an hour of a dependency being down


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
