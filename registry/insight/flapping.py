"""Flapping (CONTRACT §13): a workspace whose status keeps changing.

A status change is a recorded status event, so the changes are counted from
`structure_events` (the workspace's index, from the first event of the window on):
a batch of changes costs one read, and a write only for a row it flags. Reaching
FLAP_THRESHOLD within FLAP_WINDOW_SECONDS flags the row (`flapping`) and records
WORKSPACE_FLAPPING once, in the transaction of the change; the insight sweep unflags
a row without a status change for a whole window (WORKSPACE_STABLE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.db import array_literal
from registry.statuses import STATUS_AFTER_EVENT, EventType

Recorded = tuple[EventType, UUID | str | None, dict[str, Any]]
STATUS_TYPES: list[str] = [str(t) for t in STATUS_AFTER_EVENT]

# The first event id of the window, found on the time index in one probe. Ids follow
# commit order only roughly (created_at is a transaction's start), so the probe starts
# SLACK_SECONDS earlier; the exact window is then tested on created_at.
SLACK_SECONDS = 300
FLOOR_CTE = """floor AS (
        SELECT COALESCE((SELECT id FROM structure_events
                         WHERE created_at > now() - make_interval(secs => :flap_window + :slack)
                         ORDER BY created_at LIMIT 1), 9223372036854775807) AS id
    )"""
CHANGES_OF_W = """(SELECT count(*) FROM structure_events e, floor
        WHERE e.workspace_id = {ws} AND e.id >= floor.id AND e.event_type = ANY(:types)
          AND e.created_at > now() - make_interval(secs => :flap_window))"""

# `:pending`: the batch's events are not inserted yet (the heartbeat and single-event
# paths call before recording); a marking statement has inserted its own already.
# `:verify`: flag only a row whose status really changed in this transaction (the
# trigger sets status_changed_at to the transaction's now()); an event recorded
# without a change is no flap.
# The flagging CTEs (`flagged`: id, changes), also folded into the incident
# statement of a batch with degradations (registry.insight.incidents): one statement less.
FLAG_CTES = f"""ch AS (
        SELECT id, count(*) AS n FROM unnest(CAST(:flap_ids AS uuid[])) AS u(id) GROUP BY id
    ), {FLOOR_CTE}, counted AS (
        SELECT ch.id, CASE WHEN :pending THEN ch.n ELSE 0 END + {CHANGES_OF_W.format(ws="ch.id")}
                   AS changes
        FROM ch
    ), flagged AS (
        UPDATE workspaces w SET flapping = true
        FROM counted c
        WHERE w.id = c.id AND c.changes >= :threshold AND NOT w.flapping
          AND (NOT :verify OR w.status_changed_at = now())
        RETURNING w.id::text AS id, c.changes
    )"""
_NOTE_CHANGES = text(f"WITH {FLAG_CTES} SELECT id, changes FROM flagged")


def flag_params(
    settings: Settings, ids: Sequence[str], *, pending: bool, verify: bool
) -> dict[str, Any]:
    return {
        "flap_ids": list(ids),
        "flap_window": settings.flap_window_seconds,
        "slack": SLACK_SECONDS,
        "types": STATUS_TYPES,
        "threshold": settings.flap_threshold,
        "pending": pending,
        "verify": verify,
    }


def flapping_events(settings: Settings, rows: Sequence[Any]) -> list[Recorded]:
    """WORKSPACE_FLAPPING for (id, changes) rows just flagged."""
    window = settings.flap_window_seconds
    return [
        (EventType.WORKSPACE_FLAPPING, row.id, {"changes": row.changes, "window": window})
        for row in rows
    ]


def note_changes(
    conn: Connection,
    settings: Settings,
    ids: Sequence[str],
    *,
    pending: bool = True,
    verify: bool = False,
) -> list[Recorded]:
    """Count status changes (one id per change); WORKSPACE_FLAPPING for rows just flagged."""
    params = flag_params(settings, ids, pending=pending, verify=verify)
    return flapping_events(settings, conn.execute(_NOTE_CHANGES, params).all())


_UNFLAG = text(
    f"""
    WITH {FLOOR_CTE}, quiet AS (
        SELECT w.id FROM workspaces w, floor
        WHERE w.flapping AND {CHANGES_OF_W.format(ws="w.id")} = 0
        LIMIT :limit
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE workspaces w SET flapping = false, flap_hold_since = NULL
    FROM quiet WHERE w.id = quiet.id
    RETURNING w.id::text AS id
    """
)


def unflag_quiet(conn: Connection, settings: Settings, limit: int = 1000) -> list[Recorded]:
    """Unflag rows without a status change for a whole window: WORKSPACE_STABLE each."""
    window = settings.flap_window_seconds
    rows = conn.execute(
        _UNFLAG,
        {"flap_window": window, "slack": SLACK_SECONDS, "types": STATUS_TYPES, "limit": limit},
    ).all()
    return [(EventType.WORKSPACE_STABLE, row.id, {"quiet_seconds": window}) for row in rows]


def recent_changes(conn: Connection, settings: Settings, ids: Sequence[str]) -> dict[str, int]:
    """Status changes within the window per workspace (the report's flapping list)."""
    rows = conn.execute(
        text(
            f"""
            WITH {FLOOR_CTE}
            SELECT u.id::text AS id, {CHANGES_OF_W.format(ws="u.id")} AS changes
            FROM unnest(CAST(:ids AS uuid[])) AS u(id)
            """
        ),
        {
            "ids": array_literal(ids),
            "flap_window": settings.flap_window_seconds,
            "slack": SLACK_SECONDS,
            "types": STATUS_TYPES,
        },
    ).all()
    return {row.id: row.changes for row in rows}
