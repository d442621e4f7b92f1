"""A heartbeat body the registry's §4.2 model would certainly accept, checked without it.

Validating a heartbeat with the pydantic model was a quarter of the gateway's CPU per
call. Nearly every heartbeat is a handful of plain fields, so those are checked here
with the model's own rules; anything this check does not know for sure (a field with
richer rules, a value at a bound it does not handle, non-ASCII text) goes to the model,
which gives the verdict and the error text. This check only ever says "valid" or "ask
the model", never "invalid", so a refusal's words are always the model's
(tests/test_gateway_quickcheck.py compares the two on generated bodies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from registry.ingestion.payloads import MAX_INT32, MAX_NAME, MAX_STRING


def _count(value: Any) -> bool:  # Count: a strict int in [0, 2^31 - 1]
    return type(value) is int and 0 <= value <= MAX_INT32


def _text(limit: int, optional: bool) -> Callable[[Any], bool]:
    # A strict str within `limit` characters, storable: no NUL and (ASCII only here)
    # no lone surrogate; other text goes to the model.
    def check(value: Any) -> bool:
        if value is None:
            return optional
        return (
            type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value
        )

    return check


def _fraction(value: Any) -> bool:  # a float in [0, 1]; NaN fails both comparisons
    return type(value) is float and 0.0 <= value <= 1.0


def _runtime_metadata(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is not dict:
        return False
    capabilities = value.get("capabilities", {})
    if type(capabilities) is not dict:
        return False
    name = _text(MAX_NAME, optional=False)
    if not all(name(k) and type(v) is bool for k, v in capabilities.items()):
        return False
    idle = value.get("idle_timeout_seconds")
    return idle is None or _count(idle)


_FIELDS: dict[str, Callable[[Any], bool]] = {
    "error_rate": _fraction,
    "sample_error": _text(MAX_STRING, optional=True),
    "active_tasks": _count,
    "uptime_seconds": _count,
    "current_task": _text(MAX_STRING, optional=True),
    "monthly_spend": lambda value: type(value) is int,  # any integer, clamped later
    "runtime_state": _text(64, optional=False),
    "runtime_metadata": _runtime_metadata,
    "agent_card": lambda _value: True,  # advisory: any value (CONTRACT §12)
    "is_busy": lambda value: value is None or type(value) is bool,
    "auth_token": lambda _value: True,  # never taken from the body (the bearer is)
}


def certain_workspace_id(body: dict[str, Any], known: frozenset[str]) -> UUID | None:
    """The workspace id if `body` is certainly a valid heartbeat; None: ask the model.

    `known`: the model's field names; keys outside it are ignored, as the model does.
    """
    raw = body.get("workspace_id")
    if type(raw) is not str:
        return None
    for key, value in body.items():
        if key == "workspace_id":
            continue
        check = _FIELDS.get(key)
        if check is None:
            if key in known:
                return None  # a field with richer rules (sent_at): the model decides
            continue
        if not check(value):
            return None
    try:
        return UUID(raw)
    except ValueError:
        return None
