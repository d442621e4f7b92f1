"""How a worker takes in a per-message heartbeat (CONTRACT §4.2; docs/ARCHITECTURE.md).

Celery hands every message it receives to its task's *strategy*, in the consumer's
event loop. The default strategy builds a Request, passes it to the pool, and the pool
runs the task, traces it and acknowledges it: about 0.35 ms of worker CPU per message
on this project's machine, more than a heartbeat's own share of its batch. So
`registry.heartbeat` has a strategy of its own (`heartbeat_strategy`, set on the task):

1. the message is decoded and validated where it arrives, in the event loop;
2. a valid heartbeat is handed to this process's batcher (group commit,
   registry/ingestion/batcher.py) without waiting;
3. once the transaction holding it has committed (or it was given up as stale), the
   batcher's thread acknowledges the message through the consumer (Celery's ack
   promise hands the ack to the event loop, so the broker channel is only ever
   written from the loop thread).

Nothing is acknowledged before its commit, as with acks late: a SIGKILLed worker's
heartbeats are redelivered and `sent_at` makes a second application moot. Messages
wait unacknowledged under the consumer's prefetch limit, which is the back-pressure
when the database is slow or down. An invalid or expired heartbeat is answered
(logged, counted) and acknowledged at once.

Kept from Celery's path: the "received" and "succeeded" log lines (INFO), task events
when the worker sends them (-E), revocation and `expires`, and the task metrics
(`registry_task_duration_seconds`, measured from receipt to commit, and
`registry_task_results_total`). Not kept: time limits (a heartbeat never runs in the
pool), the task_received/task_success signals, `inspect active` (heartbeats are
never "active" in the pool), and `eta`/`countdown`: a heartbeat is evidence of life
now, so it is applied when it arrives (its `sent_at` still orders it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.signals import task_postrun
from celery.utils.time import maybe_iso8601

from registry import metrics
from registry.ingestion.batcher import get_batcher
from registry.ingestion.intake import parse_heartbeat, report_refusal
from registry.redaction import redacted_exception
from registry.transient import TRANSIENT_ERRORS

log = logging.getLogger(__name__)
# The same loggers Celery's own strategy and tracer use, so log handling and the
# lines' format do not change with the path a task took.
received_log = logging.getLogger("celery.worker.strategy")
trace_log = logging.getLogger("celery.app.trace")

Ack = Callable[..., Any]


def heartbeat_payload(message: Any, body: Any) -> Any:
    """The task's one argument from a Celery message, protocol 2 or 1."""
    if body is None:  # protocol 2: the body is [args, kwargs, embed]
        decoded = message.decode()
        args, kwargs = (decoded[0], decoded[1]) if isinstance(decoded, list | tuple) else ((), {})
    else:  # protocol 1: the body is a dict holding args and kwargs
        args, kwargs = body.get("args") or (), body.get("kwargs") or {}
    if isinstance(args, list | tuple) and len(args) == 1 and not kwargs:
        return args[0]
    if not args and isinstance(kwargs, dict) and set(kwargs) == {"payload"}:
        return kwargs["payload"]
    return None  # refused by validation: "payload: must be a JSON object"


def _expired(expires: Any) -> bool:
    if not expires:
        return False
    try:
        when = maybe_iso8601(expires)
    except (TypeError, ValueError):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= datetime.now(UTC)


def heartbeat_strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Callable[..., None]:
    """Celery strategy for `registry.heartbeat` (see the module docstring)."""
    batcher = get_batcher(TRANSIENT_ERRORS)
    # Heartbeats wait in the batcher unacknowledged, so the consumer's prefetch window
    # bounds what a batch can gather: the batcher must not wait for more than that.
    batcher.bound_by(lambda: consumer.qos.value)
    revoked = consumer.controller.state.revoked
    eventer = consumer.event_dispatcher
    send_event = (
        eventer.send if eventer is not None and eventer.enabled and task.send_events else None
    )
    name = task.name
    connection_errors = consumer.connection_errors

    def handle(message: Any, body: Any, ack: Ack, reject: Ack, callbacks: Any, **__: Any) -> None:
        def acknowledge() -> None:
            # Celery's ack promise runs `message.ack_log_error(logger, errors)` in the
            # event loop, whichever thread calls it.
            ack(log, connection_errors)

        headers = message.headers if body is None else body
        task_id = headers.get("id")
        if task_id in revoked or _expired(headers.get("expires")):
            trace_log.info("Discarding revoked or expired task: %s[%s]", name, task_id)
            acknowledge()
            return
        received = time.perf_counter()
        if received_log.isEnabledFor(logging.INFO):
            context = {"id": task_id, "name": name, "args": "", "kwargs": "", "eta": None}
            received_log.info(LOG_RECEIVED, context, extra={"data": context})
        if send_event is not None:
            send_event("task-received", uuid=task_id, name=name, args="", kwargs="")
        parsed = parse_heartbeat(heartbeat_payload(message, body))
        if isinstance(parsed, dict):
            _finish(task, task_id, parsed, None, received=received, send_event=send_event)
            acknowledge()
            return

        def done(result: dict[str, Any] | None, error: BaseException | None) -> None:
            if result is not None:
                report_refusal(parsed.workspace_id, result)
            _finish(task, task_id, result, error, received=received, send_event=send_event)
            acknowledge()  # after the commit (or the verdict), as acks late would

        batcher.submit_async(parsed, done)

    return handle


def _finish(
    task: Any,
    task_id: str | None,
    result: dict[str, Any] | None,
    error: BaseException | None,
    *,
    received: float,
    send_event: Callable[..., Any] | None,
) -> None:
    """Metrics, the trace log line, the task event and Celery's task_postrun signal of one
    finished heartbeat (the signal carries no arguments: the payload holds the token)."""
    name = task.name
    runtime = time.perf_counter() - received
    # An exception's text may quote a token (CONTRACT §4.1 step 8; registry/redaction.py).
    clean = redacted_exception(error) if error is not None else None
    if task_postrun.receivers:
        state = "FAILURE" if clean is not None else "SUCCESS"
        retval = clean if clean is not None else result
        task_postrun.send(
            sender=task, task_id=task_id, task=task, args=(), kwargs={}, retval=retval, state=state
        )
    if clean is not None:
        metrics.observe_task(name, "error", runtime)
        trace_log.error("Task %s[%s] raised unexpected: %r", name, task_id, clean)
        if send_event is not None:
            send_event("task-failed", uuid=task_id, exception=repr(clean))
        return
    assert result is not None
    metrics.observe_task(name, str(result.get("status", "ok")), runtime)
    if trace_log.isEnabledFor(logging.INFO):
        context = {"id": task_id, "name": name, "return_value": result, "runtime": runtime}
        trace_log.info(LOG_SUCCESS, context, extra={"data": context})
    if send_event is not None:
        send_event("task-succeeded", uuid=task_id, result=repr(result), runtime=runtime)
