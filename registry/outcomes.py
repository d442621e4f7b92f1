"""How a message ends when it cannot be applied: one exception per result status.

Domain functions raise these inside the unit of work, so the transaction rolls back
and nothing changes; `as_result` turns them into the task's result object. A payload
that fails validation is one too (`registry.ingestion.payloads.PayloadError` is a `Rejected`).
"""

from __future__ import annotations

from typing import Any


class Refusal(dict[str, Any]):
    """A refusal's answer (the task's result object, exactly as before) carrying the
    metric label of the reason it was refused, decided where the refusal was: counted
    from that label (`registry.metrics.count_refusal`), never parsed back out of the
    error text. The label is an attribute, not a key: the answer is unchanged."""

    def __init__(self, answer: dict[str, Any], label: str) -> None:
        super().__init__(answer)
        self.label = label


def refusal_label(result: dict[str, Any]) -> str | None:
    """The metric label of a result: None when it applied, else the label its refusal
    carries (or its status, for a result made elsewhere)."""
    if result.get("status") in ("ok", "registered", "updated", "created", "removed"):
        return None
    return getattr(result, "label", None) or str(result.get("status"))


class MessageRefused(Exception):
    """Base: the message is answered, never retried, and changes nothing."""

    status = "rejected"
    label = "invalid"  # the metric label unless the refusal names a finer one

    def __init__(self, error: str, *, label: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        if label is not None:
            self.label = label

    def as_result(self) -> Refusal:
        return Refusal({"status": self.status, "error": self.error}, self.label)


class Rejected(MessageRefused):
    status = "rejected"


class Unauthorized(MessageRefused):
    status = "unauthorized"
    label = "unauthorized"


class Ignored(MessageRefused):
    """Valid but moot (a removed workspace, an older heartbeat): nothing to do."""

    status = "ignored"
    label = "ignored"

    def as_result(self) -> Refusal:
        return Refusal({"status": self.status, "reason": self.error}, self.label)


class ConcurrentRegistration(Exception):
    """Two first registrations of one id raced; the message is retried."""
