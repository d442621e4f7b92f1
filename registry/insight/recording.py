"""The hooks every status-change path calls, in its own transaction (CONTRACT §13).

`registry.uow.record_event(s)_on_commit` calls `before_recording` with the events it
is about to insert; `registry.liveness.transitions.mark_unreachable` calls
`after_marking` with the events its statement inserted. Both return the extra events
(incidents, flapping) to record in the same transaction. A batch without a status
change costs nothing: no statement is sent.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from registry.config import get_settings
from registry.insight import flapping, incidents
from registry.statuses import STATUS_AFTER_EVENT, EventType

Recorded = tuple[EventType, UUID | str | None, dict[str, Any]]


def before_recording(
    conn: Connection, events: list[Recorded], *, verify: bool = False
) -> list[Recorded]:
    """Bookkeeping for status-change events about to be recorded; tags degradations
    with their incident (in place) and returns the events to record after them.
    `verify`: the caller may record a status event without a change (a registration of
    an online workspace): count only rows whose status changed in this transaction."""
    changed = [str(ws) for kind, ws, _ in events if kind in STATUS_AFTER_EVENT and ws is not None]
    if not changed:
        return []
    settings = get_settings()
    degraded = [
        (str(ws), payload)
        for kind, ws, payload in events
        if kind == EventType.WORKSPACE_DEGRADED and ws is not None
    ]
    if degraded:  # the flapping count rides in the incident statement
        return incidents.note_degradations(conn, settings, degraded, verify=verify, changed=changed)
    return flapping.note_changes(conn, settings, changed, verify=verify)


def after_marking(conn: Connection, changed: list[str]) -> list[Recorded]:
    """Bookkeeping for workspaces a marking statement just made unreachable."""
    if not changed:
        return []
    settings = get_settings()
    return incidents.note_unreachable(conn, settings, changed) + flapping.note_changes(
        conn, settings, changed, pending=False
    )
