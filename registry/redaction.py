"""The token rule (CONTRACT §4.1 step 8) enforced in one place.

A plaintext token may appear only in the result handed to its producer (the result
backend). Everything else a worker writes is text derived from messages and results:
log lines at every level (Celery's "Task … succeeded: {…}" at INFO, the pool's raw
message bodies at DEBUG, tracebacks), task events (`-E`: task-received carries the
producer's `argsrepr`, task-succeeded the result's repr, task-failed the exception's),
and exception messages. So this module redacts text, and the two choke points every
such text passes through call it:

- `install_log_redaction()` replaces the process's log-record factory: every record is
  redacted when it is created, whichever logger or handler it later reaches (its
  message, its pre-formatted traceback and stack). Installed by `workers.app` (so by
  every worker, beat and pool process) and by the CLI.
- `RedactingEvents` is the Celery app's events class: its dispatcher redacts every
  field of every task event before it is sent. (`RedactingRequest`, the request class
  of every registry task, also redacts the producer's `argsrepr` at receipt.)

What counts as a token: the value of any `auth_token` key in a repr, JSON or
`key=value` text, and any free-standing 43-character URL-safe base64 word (the shape
of every token the registry issues, CONTRACT §10) whatever key it sits under.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.worker.request import Request

REDACTED = "[redacted]"

# `'auth_token': 'x'`, `"auth_token": "x"`, `auth_token=x`, and the same inside an
# escaped JSON string (`\"auth_token\": \"x\"`) as a repr of a message body shows it.
# A bare `auth_token: …` is prose (the registry's own "auth_token: missing or not
# valid" error), not a value; a real token there is still caught by its shape below.
_KEYED = re.compile(
    r"""(?P<key>auth_token(?:\\*['"]\s*:\s*|\s*=\s*)\\*['"]?)(?!\[redacted\])(?P<value>[^'"\\\s,;}\])]+)""",
    re.IGNORECASE,
)
# 32 random bytes, URL-safe base64 without padding: exactly 43 characters.
_TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_=-])")


def redact(text: str) -> str:
    """`text` with every token (by key or by shape) replaced by `[redacted]`."""
    if not text:
        return text
    text = _KEYED.sub(lambda m: m.group("key") + REDACTED, text)
    return _TOKEN_SHAPE.sub(REDACTED, text)


def redact_value(value: Any) -> Any:
    """Strings redacted, containers rebuilt with redacted members, anything else as is."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() == "auth_token" else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


# ---------------------------------------------------------------------------
# Log records

_installed: list[logging._LogRecordFactory] = []  # type: ignore[name-defined]
_exception_formatter = logging.Formatter()


def _scrub(record: logging.LogRecord) -> None:
    if record.args:
        # The arguments too, not only the message they format: structured handlers
        # read them (Celery passes the received message's argsrepr among them).
        record.args = redact_value(record.args)
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it; keep the record as is
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters use a pre-formatted exc_text when present; an exception's message
        # may hold whatever the failing code put there.
        record.exc_text = redact(_exception_formatter.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on (idempotent)."""
    if _installed:
        return
    base = logging.getLogRecordFactory()
    _installed.append(base)

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)


# ---------------------------------------------------------------------------
# Task events


class RedactingEventDispatcher(EventDispatcher):
    """Celery's event dispatcher, with every field of every event redacted."""

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        return super().send(type, *args, **{k: redact_value(v) for k, v in fields.items()})


class RedactingEvents(Events):
    """`app.events` whose Dispatcher (the one the worker sends task events with) redacts."""

    dispatcher_cls = "registry.redaction:RedactingEventDispatcher"


class RedactingRequest(Request):
    """A received task whose `argsrepr`/`kwargsrepr` (set by the producer, so possibly
    the whole payload with its token) are redacted wherever the worker shows them: the
    "received" log line's extra data, task events, `inspect` answers."""

    @property
    def argsrepr(self) -> str:
        return redact(super().argsrepr or "")

    @property
    def kwargsrepr(self) -> str:
        return redact(super().kwargsrepr or "")


def redacted_exception(exc: BaseException) -> BaseException:
    """`exc` itself when its message holds no token, else a RuntimeError saying what it was."""
    message = str(exc)
    clean = redact(message)
    if clean == message:
        return exc
    return RuntimeError(f"{type(exc).__name__}: {clean}")
