"""No message can stop a worker (CONTRACT §4, "Intake never dies"; docs/SECURITY.md).

Celery's consumer hands every delivered message to the task's strategy in the worker's
event loop, and an exception there is not caught: Celery logs "Unrecoverable error"
and the worker exits. The message was never acknowledged, so it is delivered to the
next worker and stops that one too. Anyone who can publish to the broker can do it
with a body of the wrong shape, a header of the wrong type, or a payload nested too
deeply for a recursive walk.

`GuardedConsumer` (the app's `worker_consumer`) puts one screen in front of every
strategy, the registry's own heartbeat strategy and Celery's default one alike:

1. `screen()` checks the envelope before any strategy sees it: content type, raw
   size, headers and properties of the types Celery reads, a decodable body of the
   protocol's shape and within the nesting bound, a registered task, and arguments
   the task's signature accepts. A message that fails is *refused*: logged without
   its arguments (only a sanitised task name and id), counted in
   `registry_messages_refused_total{task,reason}`, and acknowledged.
2. Whatever still raises inside the strategy is refused the same way (reason
   `unexpected_error`), so a bug on one message costs that message, not the worker.

A message that passes is handed on unchanged: kombu caches the decoded body, so the
strategy does not decode it twice.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from celery.utils.time import maybe_iso8601
from celery.worker.consumer import Consumer
from vine import promise

from registry import metrics
from registry.ingestion.envelope import MAX_MESSAGE_BYTES, body_bound_error
from registry.ingestion.intake import printable_id as printable

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPE = "application/json"
DEFAULT_STRATEGY = "celery.worker.strategy:default"
MAX_ID_LENGTH = 255
MAX_HEADER_TEXT = 65_536

# Header fields Celery reads (protocol 2), by the types it can handle.
_TEXT_HEADERS = (
    "root_id",
    "parent_id",
    "group",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "shadow",
    "lang",
    "replaced_task_nesting_id",
)
_INT_HEADERS = ("retries", "group_index", "replaced_task_nesting")
_BOOL_HEADERS = ("ignore_result",)
_TEXT_PROPERTIES = ("correlation_id", "reply_to")


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused: a fixed `reason` label and a short text."""

    reason: str
    detail: str


def _refusal(reason: str, detail: str) -> Refusal:
    return Refusal(reason, detail)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_HEADER_TEXT


def _is_time(value: Any) -> bool:
    # Celery parses these as ISO 8601 and fails on text that is not (an empty one
    # included: found by the message fuzzing campaign).
    return isinstance(_iso8601(value), datetime)


def _is_limits(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in value
        )
    )


# header: (what a present value must satisfy, what the refusal says)
_HEADER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(_TEXT_HEADERS, (_is_text, "must be text")),
    **dict.fromkeys(_INT_HEADERS, (_is_int, "must be an integer")),
    **dict.fromkeys(_BOOL_HEADERS, (lambda v: isinstance(v, bool), "must be a boolean")),
    "eta": (_is_time, "must be an ISO 8601 time"),
    "expires": (_is_time, "must be an ISO 8601 time"),
    "timelimit": (_is_limits, "must be a pair of numbers"),
    "stamped_headers": (lambda v: isinstance(v, list), "must be a list"),
    "stamps": (lambda v: isinstance(v, dict), "must be an object"),
}


def _header_error(headers: dict[Any, Any]) -> str | None:
    for key, (valid, problem) in _HEADER_RULES.items():
        value = headers.get(key)
        if value is not None and not valid(value):
            return f"header {key}: {problem}"
    return None


def _iso8601(value: Any) -> Any:
    try:
        return maybe_iso8601(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _identity_error(task: Any, task_id: Any) -> str | None:
    if not isinstance(task, str) or not task or len(task) > MAX_ID_LENGTH:
        return "task name: must be non-empty text"
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LENGTH:
        return "task id: must be non-empty text"
    return None


def _arguments_of(body: Any, protocol: int) -> tuple[Any, Any] | None:
    """(args, kwargs) from a decoded body of `protocol`, or None if it has not that shape."""
    if protocol == 2:
        if not (isinstance(body, list | tuple) and len(body) == 3):
            return None
        args, kwargs, embed = body
        if not isinstance(embed, dict | type(None)):
            return None
    else:
        if not isinstance(body, dict):
            return None
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return None
    if not all(isinstance(key, str) for key in kwargs):
        return None
    return args, kwargs


@lru_cache(maxsize=256)
def _signature(task: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(task.run)
    except (TypeError, ValueError):  # a callable without one: let the task decide
        return None


def _arguments_error(task: Any, args: Any, kwargs: dict[str, Any]) -> str | None:
    signature = _signature(task)
    if signature is None:
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return "arguments: the task takes one JSON object (its payload)"
    return None


def _transport_refusal(message: Any) -> Refusal | None:
    """Refusal for what the broker carries around the body (headers, type, size)."""
    if not isinstance(message.headers, dict):
        return _refusal("bad_headers", "headers: must be an object")
    properties = message.properties
    if not isinstance(properties, dict) or any(
        not isinstance(properties.get(key), str | type(None)) for key in _TEXT_PROPERTIES
    ):
        return _refusal("bad_headers", "properties: must be an object of text values")
    if message.content_type != ACCEPTED_CONTENT_TYPE:
        return _refusal("bad_content_type", "content type: only application/json is accepted")
    raw = message.body
    if isinstance(raw, bytes | str) and len(raw) > MAX_MESSAGE_BYTES:
        return _refusal("too_large", f"body: over {MAX_MESSAGE_BYTES} bytes")
    return None


def _task_refusal(headers: dict[Any, Any], body: Any, tasks: dict[str, Any]) -> Refusal | None:
    """Refusal for a decoded message's identity, options and arguments."""
    if "task" in headers:  # protocol 2: identity and options in the headers
        protocol, options = 2, headers
    elif isinstance(body, dict):  # protocol 1: identity and options in the body
        protocol, options = 1, body
    else:
        return _refusal("bad_body", "body: not a task message")
    name = options.get("task")
    problem = _identity_error(name, options.get("id")) or _header_error(options)
    if problem is not None:
        return _refusal("bad_headers", problem)
    task = tasks.get(name)
    if task is None:
        return _refusal("unknown_task", "task: not a registry task")
    arguments = _arguments_of(body, protocol)
    if arguments is None:
        return _refusal("bad_body", "body: not of the task protocol's shape")
    if getattr(task, "Strategy", DEFAULT_STRATEGY) != DEFAULT_STRATEGY:
        return None  # a strategy of its own answers a wrong call itself (heartbeat_intake)
    problem = _arguments_error(task, *arguments)
    return _refusal("bad_arguments", problem) if problem is not None else None


def screen(message: Any, tasks: dict[str, Any]) -> Refusal | None:
    """Why `message` must be refused before any strategy sees it, or None (see module)."""
    refusal = _transport_refusal(message)
    if refusal is not None:
        return refusal
    try:
        body = message.decode()
    except Exception:  # DecodeError, RecursionError, MemoryError's cousins: all refused
        return _refusal("undecodable", "body: not valid JSON")
    bound = body_bound_error(body)
    if bound is not None:
        return _refusal("too_deep", bound)
    return _task_refusal(message.headers, body, tasks)


def _names_of(message: Any) -> tuple[Any, Any]:
    headers = getattr(message, "headers", None)
    if isinstance(headers, dict) and "task" in headers:
        return headers.get("task"), headers.get("id")
    return None, None


def refuse(message: Any, refusal: Refusal, tasks: dict[str, Any], errors: tuple[Any, ...]) -> None:
    """Log (without arguments), count and acknowledge a refused message."""
    name, task_id = _names_of(message)
    label = name if isinstance(name, str) and name in tasks else "unknown"
    metrics.count_refusal(label, refusal.reason)
    log.warning(
        "message refused (%s): %s [task=%s id=%s]",
        refusal.reason,
        refusal.detail,
        printable(name),
        printable(task_id),
    )
    if not message.acknowledged:
        message.ack_log_error(log, errors)


def guarded(
    handler: Callable[[Any], Any], tasks: dict[str, Any], errors: tuple[Any, ...]
) -> Callable[[Any], None]:
    """`handler` (Celery's on_task_received) behind the screen, never raising."""

    def on_task_received(message: Any) -> None:
        try:
            refusal = screen(message, tasks)
        except Exception:  # the screen itself must not be the way in
            refusal = _refusal("bad_headers", "envelope: unreadable")
        if refusal is not None:
            refuse(message, refusal, tasks, errors)
            return
        try:
            handler(message)
        except Exception as exc:
            # The type and where it was raised, never the exception's text: that may quote
            # the payload (a token, or a newline forging a log line).
            refuse(message, _refusal("unexpected_error", _where(exc)), tasks, errors)

    return on_task_received


def _where(exc: BaseException) -> str:
    """`AttributeError at celery/worker/request.py:123 (function)`: enough to find the bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    path = "/".join(last.filename.split("/")[-3:])
    return f"{type(exc).__name__} at {path}:{last.lineno} ({last.name})"


class GuardedConsumer(Consumer):
    """Celery's consumer with every task message screened first (see module)."""

    class Blueprint(Consumer.Blueprint):
        # Delayed delivery set up through the first broker node that answers
        # (workers/delayed_delivery.py), not retried through each dead one.
        default_steps = [
            "workers.delayed_delivery:ClusterDelayedDelivery"
            if step.endswith(":DelayedDelivery")
            else step
            for step in Consumer.Blueprint.default_steps
        ]

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], None]:
        handler = super().create_task_handler(promise)
        return guarded(handler, self.app.tasks, self.connection_errors)
