"""The board's fleet-insight parts (CONTRACT §13): open incidents, shown above
everything else, and a workspace's status strip over the last 24 hours."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from registry.events.outbox import rfc3339
from registry.insight.history import UnknownWorkspace, workspace_history

STRIP_HOURS = 24
MAX_SHOWN = 50  # open incidents on the board; more would be one incident in itself

_OPEN = text(
    """
    SELECT id, kind, signature, sample_error, members, peak_members, opened_at, parent_id
    FROM incidents WHERE resolved_at IS NULL ORDER BY opened_at DESC, id DESC LIMIT :limit
    """
)
_NOW = text("SELECT now()")


def open_incidents(conn: Connection) -> list[dict[str, Any]]:
    return [
        {
            "incident_id": r.id,
            "kind": r.kind,
            "signature": r.signature,
            "sample_error": r.sample_error,
            "members": r.members,
            "peak_members": r.peak_members,
            "opened_at": rfc3339(r.opened_at),
            "parent_id": str(r.parent_id) if r.parent_id else None,
        }
        for r in conn.execute(_OPEN, {"limit": MAX_SHOWN})
    ]


def status_strip(conn: Connection, workspace_id: UUID) -> dict[str, Any] | None:
    """The last 24 h as segments `{start, end, status}` and the availability; None for
    an unknown workspace."""
    since = conn.execute(_NOW).scalar_one() - timedelta(hours=STRIP_HOURS)
    try:
        found = workspace_history(conn, str(workspace_id), since)
    except UnknownWorkspace:
        return None
    return {
        "since": rfc3339(since),
        "until": rfc3339(found.until),
        "availability_percent": found.as_dict()["availability_percent"],
        "segments": [
            {"start": rfc3339(s.start), "end": rfc3339(s.end), "status": s.status}
            for s in found.segments
        ],
    }
