"""The plumbing every registry task shares, owned by one base class (CONTRACT §4, §5).

`RegistryTask` owns, for every task:
- retries: transient errors (database or Redis unreachable, a concurrent
  registration) retry with exponential backoff and jitter; anything else is an
  answer or a bug, never retried;
- time limits: a stuck run is stopped well before the broker would redeliver its
  message (`registry.limits.task_time_limits`);
- timing: every run is observed in `registry_task_duration_seconds{task}` and counted
  by the `status` of its result in `registry_task_results_total{task,status}`.

Message tasks (`message_task`) call `self.run_message(Model, payload, handler)`: the
payload is parsed with its pydantic model, the handler runs in one unit of work, and a
refusal (`rejected`, `unauthorized`, `ignored`) rolls back, is logged without the
payload (it carries tokens), and is the task's answer.

Periodic tasks (`periodic_task`) declare their beat entry, interval setting, queue and
`expires` beside themselves (`tasks/schedule.py` builds the beat schedule and the
routes from these declarations); they never retry, and every run is also observed as
a sweep (`registry_sweep_*`).

    @message_task(REGISTER_TASK, queue=DEFAULT_QUEUE)
    def register_task(self, payload):
        return self.run_message(RegisterPayload, payload, register)

    @periodic_task(SWEEP_HEALTH_TASK, entry="sweep-health", every="health_sweep_interval",
                   sweep="health")
    def sweep_health_task(self): ...

A task made with `@shared_task(base=RegistryTask)` gets the retries, time limits and
timing too; `message_task`/`periodic_task` add the declaration (queue, schedule) that
routing, beat and tests/test_contract.py read.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from celery import Task, shared_task
from celery.exceptions import Retry
from pydantic import BaseModel

from molecule_registry_client.names import SWEEP_QUEUE
from registry import metrics
from registry.config import Settings, get_settings
from registry.ingestion.payloads import parse_payload
from registry.ingestion.tokens import Delivery
from registry.limits import MAX_RETRIES, RETRY_BACKOFF, RETRY_BACKOFF_MAX, task_time_limits
from registry.outcomes import MessageRefused
from registry.redaction import redacted_exception
from registry.transient import TRANSIENT_ERRORS
from registry.uow import UnitOfWork, unit_of_work

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Declaration:
    """Where a task is routed and, for a periodic one, how beat schedules it."""

    name: str
    queue: str
    entry: str | None = None  # beat schedule entry name (periodic tasks only)
    every: str | None = None  # Settings field holding the interval in seconds

    def interval(self, settings: Settings) -> int:
        if self.every is None:
            raise ValueError(f"{self.name} is not periodic")
        return int(getattr(settings, self.every))

    def expires(self, settings: Settings) -> float:
        return expires_for(self.interval(settings))


def expires_for(interval: int) -> float:
    """Seconds after which a periodic message is dropped: always below its interval,
    so a backlog of sweeps behind a stalled worker drops instead of piling up."""
    return interval * 0.9


# Every task the registry defines, by name (filled as the task modules are imported).
DECLARATIONS: dict[str, Declaration] = {}


def log_refusal(task_name: str, result: dict[str, Any], workspace_id: str | None = None) -> None:
    """Log a refused message: its status, error and workspace id — never the payload."""
    log.info(
        "%s %s (workspace_id=%s): %s",
        task_name,
        result.get("status"),
        workspace_id,
        result.get("error") or result.get("reason"),
    )


_SOFT_LIMIT, _HARD_LIMIT = task_time_limits(get_settings())


class RegistryTask(Task):
    """Base of every registry task: retries, time limits, timing (see module doc)."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = RETRY_BACKOFF
    retry_backoff_max = RETRY_BACKOFF_MAX
    retry_jitter = True
    # The retry span is bounded (registry/limits.py) so that it, plus the visibility
    # timeout, makes the redelivery window a registration's token answer is limited
    # to; a stuck run is interrupted (soft) then killed (hard) before the broker could
    # hand its message to a second worker. Prefork pool only (Celery's limits).
    max_retries = MAX_RETRIES
    soft_time_limit = _SOFT_LIMIT
    time_limit = _HARD_LIMIT
    # The producer's argsrepr header may hold a token: redacted at receipt
    # (CONTRACT §4.1 step 8; registry/redaction.py).
    Request = "registry.redaction:RedactingRequest"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Celery builds one subclass per task function, with the function as `run`:
        # wrap it here, so every task on this base is timed whatever decorator made
        # it. Wrapping `run` rather than overriding `__call__` keeps Celery's fast
        # path (its tracer calls `run` directly unless `__call__` is overridden, and
        # Task.__call__ costs tens of µs per message: too much for heartbeats).
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if isinstance(run, staticmethod):
            cls.run = staticmethod(_timed(cls, run.__func__))  # type: ignore[method-assign]
        elif callable(run):
            cls.run = _timed(cls, run)  # type: ignore[method-assign]

    def transaction(self) -> AbstractContextManager[UnitOfWork]:
        """The unit of work of one run (one transaction; side effects after commit)."""
        return unit_of_work()

    def run_message(
        self,
        model: type[M],
        payload: Any,
        handler: Callable[[UnitOfWork, M], dict[str, Any]],
    ) -> dict[str, Any]:
        """Validate, apply in one transaction, and answer; refusals change nothing."""
        message: M | None = None
        try:
            message = parse_payload(model, payload)
            with self.transaction() as uow:
                return handler(uow, message)
        except MessageRefused as refused:  # bad input (PayloadError) included
            result = refused.as_result()
            metrics.count_refusal(self.name, refused.label)
            log_refusal(self.name, result, _workspace_of(message, payload))
            return result
        except Exception as exc:
            # An exception's message reaches logs, task events and the result backend:
            # one quoting a token is replaced (CONTRACT §4.1 step 8; registry/redaction.py).
            clean = redacted_exception(exc)
            if clean is exc:
                raise
            raise clean from None


class PeriodicTask(RegistryTask):
    """A sweep: never retried (the next tick does the same work), timed as a sweep."""

    autoretry_for = ()
    max_retries = 0
    sweep = ""  # the `sweep` label of registry_sweep_* (set by periodic_task)

    def send_now(self, **kwargs: Any) -> None:
        """Send one more run now, expiring like a beat tick (a full batch drains the
        rest at once rather than one interval later)."""
        self.apply_async(kwargs=kwargs, expires=DECLARATIONS[self.name].expires(get_settings()))


def _timed(task_cls: type[RegistryTask], func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` (a task body) timed per run, counted by its result's status, and — for a
    periodic task — observed as a sweep (`registry_sweep_*`)."""
    name = str(task_cls.name)
    sweep = str(getattr(task_cls, "sweep", "")) if issubclass(task_cls, PeriodicTask) else ""
    retried = (Retry, *tuple(task_cls.autoretry_for or ()))

    def body(*args: Any, **kwargs: Any) -> Any:
        if not sweep:
            return func(*args, **kwargs)
        with metrics.observe_sweep(sweep) as observed:
            result = func(*args, **kwargs)
            if isinstance(result, dict) and isinstance(result.get("changed"), int):
                observed.changed = result["changed"]
            return result

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        status = "error"
        try:
            result = body(*args, **kwargs)
        except retried:  # the autoretry wrapper around `run` turns these into a retry
            status = "retry"
            raise
        else:
            status = str(result.get("status", "ok")) if isinstance(result, dict) else "ok"
            return result
        finally:
            metrics.observe_task(name, status, time.perf_counter() - started)

    return run


def _workspace_of(message: BaseModel | None, payload: Any) -> str | None:
    # Only an id: a payload that failed to parse may hold anything, tokens included.
    value = getattr(message, "workspace_id", None) or getattr(message, "id", None)
    if value is None and isinstance(payload, dict):
        value = payload.get("workspace_id", payload.get("id"))
    text = str(value) if isinstance(value, str | UUID) else None
    return text if text is not None and len(text) <= 36 else None


def delivery_of(task: Task) -> Delivery:
    """What the broker says of this run's delivery that a replayed copy cannot imitate
    (CONTRACT §4.1 step 7; registry/ingestion/tokens.py)."""
    request = task.request
    properties = request.properties if isinstance(request.properties, dict) else {}
    info = request.delivery_info if isinstance(request.delivery_info, dict) else {}
    tag = properties.get("delivery_tag")
    if isinstance(tag, str):  # Redis: the producer's tag, kept when the broker restores it
        return Delivery(tag=tag)
    # AMQP: the broker's own flag (a producer cannot set it; on Redis it could).
    broker = str(task.app.conf.broker_url or "")
    trusted = broker.startswith(("amqp://", "amqps://", "pyamqp://"))
    return Delivery(redelivered=trusted and info.get("redelivered") is True)


def message_task(name: str, *, queue: str, bind: bool = True, **options: Any) -> Callable[[F], Any]:
    """Declare a message task routed to `queue`; its body receives `self` unless
    `bind=False`. Other Celery task options (`ignore_result`, …) pass through."""
    DECLARATIONS[name] = Declaration(name, queue)

    def decorate(func: F) -> Any:
        # shared_task: bound to the app that uses it (workers.app), so no task module
        # imports the app and celeryconfig's imports never loop back to it.
        return shared_task(name=name, base=RegistryTask, bind=bind, queue=queue, **options)(func)

    return decorate


def periodic_task(
    name: str, *, entry: str, every: str, sweep: str, queue: str = SWEEP_QUEUE
) -> Callable[[F], Any]:
    """Declare a periodic task: beat `entry`, interval from the `every` setting, `queue`.

    Its beat entry and every re-queue expire just below the interval (`expires_for`).
    """
    if every not in Settings.__dataclass_fields__:
        raise ValueError(f"{name}: no setting named {every!r} holds its interval")
    DECLARATIONS[name] = Declaration(name, queue, entry=entry, every=every)

    def decorate(func: F) -> Any:
        return shared_task(name=name, base=PeriodicTask, bind=True, queue=queue, sweep=sweep)(func)

    return decorate
