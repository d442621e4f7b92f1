"""How a message ends when it cannot be applied: one exception per result status.

Domain functions raise these inside the unit of work, so the transaction rolls back
and nothing changes; `as_result` turns them into the task's result object. A payload
that fails validation is one too (`registry.ingestion.payloads.PayloadError` is a `Rejected`).
"""

from __future__ import annotations

from typing import Any


class MessageRefused(Exception):
    """Base: the message is answered, never retried, and changes nothing."""

    status = "rejected"

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error

    def as_result(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error}


class Rejected(MessageRefused):
    status = "rejected"


class Unauthorized(MessageRefused):
    status = "unauthorized"


class Ignored(MessageRefused):
    """Valid but moot (a removed workspace, an older heartbeat): nothing to do."""

    status = "ignored"

    def as_result(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.error}


class ConcurrentRegistration(Exception):
    """Two first registrations of one id raced; the message is retried."""
