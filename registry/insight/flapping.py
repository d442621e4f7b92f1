"""Flapping (CONTRACT §13): a workspace whose status keeps changing.

Each status change appends its time to `workspaces.flap_changes` (the newest
FLAP_THRESHOLD within FLAP_WINDOW_SECONDS are kept, newest first), in the transaction
of the change; reaching FLAP_THRESHOLD flags the row (`flapping`) and records
WORKSPACE_FLAPPING once. The insight sweep unflags a row quiet for a whole window
(WORKSPACE_STABLE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.statuses import EventType

Recorded = tuple[EventType, UUID | str | None, dict[str, Any]]

# The rows are already locked by the change that called this (same transaction).
_NOTE_CHANGES = text(
    """
    WITH ch AS (
        SELECT id, count(*) AS n FROM unnest(CAST(:ids AS uuid[])) AS u(id) GROUP BY id
    ), nw AS (
        SELECT w.id, w.flapping AS was,
               ARRAY(SELECT t FROM unnest(COALESCE(w.flap_changes, '{}')
                                          || array_fill(now(), ARRAY[CAST(ch.n AS int)])) AS x(t)
                     WHERE t > now() - make_interval(secs => :window)
                     ORDER BY t DESC LIMIT :threshold) AS times
        FROM workspaces w JOIN ch ON ch.id = w.id
        -- With :verify, only a row whose status really changed in this transaction (the
        -- trigger sets status_changed_at to the transaction's now()): an event recorded
        -- without a change is no flap. A heartbeat batch's transitions are all real,
        -- even when the row ends in the status it started from.
        WHERE NOT :verify OR w.status_changed_at = now()
    )
    UPDATE workspaces w
    SET flap_changes = nw.times,
        flapping = nw.was OR cardinality(nw.times) >= :threshold
    FROM nw
    WHERE w.id = nw.id
    RETURNING w.id::text AS id, nw.was, w.flapping, cardinality(nw.times) AS changes
    """
)


def note_changes(
    conn: Connection, settings: Settings, ids: Sequence[str], *, verify: bool = False
) -> list[Recorded]:
    """Count status changes (one id per change); WORKSPACE_FLAPPING for rows just flagged.
    `verify`: count only rows whose status changed in this transaction."""
    rows = conn.execute(
        _NOTE_CHANGES,
        {
            "ids": list(ids),
            "window": settings.flap_window_seconds,
            "threshold": settings.flap_threshold,
            "verify": verify,
        },
    ).all()
    return [
        (
            EventType.WORKSPACE_FLAPPING,
            row.id,
            {"changes": row.changes, "window": settings.flap_window_seconds},
        )
        for row in rows
        if row.flapping and not row.was
    ]


_UNFLAG = text(
    """
    WITH quiet AS (
        SELECT id FROM workspaces
        WHERE flapping
          AND COALESCE(flap_changes[1], '-infinity') < now() - make_interval(secs => :window)
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE workspaces w SET flapping = false, flap_hold_since = NULL
    FROM quiet WHERE w.id = quiet.id
    RETURNING w.id::text AS id
    """
)


def unflag_quiet(conn: Connection, settings: Settings, limit: int = 1000) -> list[Recorded]:
    """Unflag rows without a status change for a whole window: WORKSPACE_STABLE each."""
    window = settings.flap_window_seconds
    rows = conn.execute(_UNFLAG, {"window": window, "limit": limit}).all()
    return [(EventType.WORKSPACE_STABLE, row.id, {"quiet_seconds": window}) for row in rows]
