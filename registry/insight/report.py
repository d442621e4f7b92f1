"""The fleet report (CONTRACT §13): incidents, self-preservation episodes, the least
available and the flapping workspaces, and the fleet's availability distribution.

Availability follows registry.insight.history; at fleet scale it is computed in SQL,
one pass over the window's status events: a workspace without a status event in the
window kept its current status all along, and the status before a workspace's first
event in the window is the one that event names (its `previous_status`, or what it
recovered from).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from registry.config import get_settings
from registry.insight.flapping import recent_changes
from registry.insight.history import DOWN, STATUS_EVENT_TYPES, UP
from registry.statuses import STATUS_AFTER_EVENT

LEAST_AVAILABLE = 10
# Upper-open buckets of the distribution, best first: (label, lowest percent).
BUCKETS: tuple[tuple[str, float], ...] = (
    ("100%", 100.0),
    ("99.9-100%", 99.9),
    ("99-99.9%", 99.0),
    ("95-99%", 95.0),
    ("90-95%", 90.0),
    ("<90%", 0.0),
)

_AFTER_SQL = (
    "CASE ev.event_type "
    + " ".join(f"WHEN '{t}' THEN '{s}'" for t, s in STATUS_AFTER_EVENT.items())
    + " END"
)
_BEFORE_SQL = (
    "CASE ev.event_type WHEN 'WORKSPACE_ONLINE' THEN ev.payload->>'recovered_from' "
    "WHEN 'WORKSPACE_DEGRADED' THEN 'online' ELSE ev.payload->>'previous_status' END"
)

_PER_WORKSPACE = f"""
    WITH ev AS (
        SELECT e.id, e.workspace_id, e.created_at, e.event_type, e.payload
        FROM structure_events e
        WHERE e.created_at >= :since AND e.event_type = ANY(:types)
          AND e.workspace_id IS NOT NULL
    ), seg AS (
        SELECT ev.workspace_id, ev.created_at AS t0,
               COALESCE(lead(ev.created_at) OVER w, now()) AS t1,
               {_AFTER_SQL} AS status, row_number() OVER w AS n, {_BEFORE_SQL} AS before
        FROM ev WINDOW w AS (PARTITION BY ev.workspace_id ORDER BY ev.created_at, ev.id)
    ), allseg AS (
        SELECT workspace_id, t0, t1, status FROM seg
        UNION ALL
        SELECT s.workspace_id, GREATEST(CAST(:since AS timestamptz), w.created_at), s.t0, s.before
        FROM seg s JOIN workspaces w ON w.id = s.workspace_id WHERE s.n = 1
    ), moving AS (
        SELECT workspace_id,
               COALESCE(sum(EXTRACT(EPOCH FROM t1 - t0)) FILTER (WHERE status = ANY(:up)), 0) AS up,
               COALESCE(sum(EXTRACT(EPOCH FROM t1 - t0)) FILTER (WHERE status = ANY(:down)), 0)
                   AS down
        FROM allseg WHERE t1 > t0 GROUP BY workspace_id
    ), still AS (
        SELECT w.id AS workspace_id,
               CASE WHEN w.status = ANY(:up) THEN 1 ELSE 0 END AS up,
               CASE WHEN w.status = ANY(:down) THEN 1 ELSE 0 END AS down
        FROM workspaces w
        WHERE w.status = ANY(:counted)
          AND NOT EXISTS (SELECT 1 FROM moving m WHERE m.workspace_id = w.id)
    ), fleet AS (
        SELECT workspace_id, 100.0 * up / (up + down) AS pct, down AS down_seconds
        FROM moving WHERE up + down > 0
        UNION ALL
        SELECT workspace_id, 100.0 * up, NULL FROM still
    )
"""

# One statement: `fleet` is read twice, so PostgreSQL computes it once.
_AVAILABILITY = text(
    _PER_WORKSPACE
    + """
    SELECT d.*, (
        SELECT COALESCE(json_agg(json_build_object(
                   'workspace_id', l.workspace_id, 'name', w.name, 'status', w.status,
                   'availability_percent', round(l.pct::numeric, 3)) ORDER BY l.pct, l.workspace_id),
               '[]')
        FROM (SELECT * FROM fleet WHERE pct < 100 ORDER BY pct, workspace_id LIMIT :limit) l
        JOIN workspaces w ON w.id = l.workspace_id
    ) AS least
    FROM (
        SELECT count(*) FILTER (WHERE pct >= 100) AS b0,
               count(*) FILTER (WHERE pct >= 99.9 AND pct < 100) AS b1,
               count(*) FILTER (WHERE pct >= 99 AND pct < 99.9) AS b2,
               count(*) FILTER (WHERE pct >= 95 AND pct < 99) AS b3,
               count(*) FILTER (WHERE pct >= 90 AND pct < 95) AS b4,
               count(*) FILTER (WHERE pct < 90) AS b5,
               count(*) AS total, avg(pct) AS mean
        FROM fleet
    ) d
    """
)
_INCIDENTS = text(
    """
    SELECT id, kind, signature, sample_error, opened_at, resolved_at, members, peak_members
    FROM incidents
    WHERE resolved_at IS NULL OR resolved_at >= :since OR opened_at >= :since
    ORDER BY resolved_at IS NOT NULL, opened_at DESC
    LIMIT 100
    """
)
_SELF_PRESERVATION = text(
    """
    SELECT payload, created_at FROM structure_events
    WHERE event_type = 'REGISTRY_SELF_PRESERVATION' AND created_at >= :since
    ORDER BY id
    """
)
_FLAPPING = text(
    "SELECT id::text AS id, name, status FROM workspaces WHERE flapping ORDER BY id LIMIT 100"
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def self_preservation_episodes(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    episodes: list[dict[str, Any]] = []
    for row in conn.execute(_SELF_PRESERVATION, {"since": since}):
        if row.payload.get("active"):
            episodes.append(
                {"start": _iso(row.created_at), "end": None, "reason": row.payload.get("reason")}
            )
        elif episodes and episodes[-1]["end"] is None:
            episodes[-1]["end"] = _iso(row.created_at)
        else:  # it began before the window
            episodes.append(
                {"start": None, "end": _iso(row.created_at), "reason": row.payload.get("reason")}
            )
    return episodes


def fleet_report(
    conn: Connection, since: datetime, *, limit: int = LEAST_AVAILABLE
) -> dict[str, Any]:
    params = {
        "since": since,
        "types": STATUS_EVENT_TYPES,
        "up": sorted(UP),
        "down": sorted(DOWN),
        "counted": sorted(UP | DOWN),
        "limit": limit,
    }
    dist = conn.execute(_AVAILABILITY, params).one()
    incidents = conn.execute(_INCIDENTS, {"since": since}).all()
    flapping_rows = conn.execute(_FLAPPING).all()
    changes = recent_changes(conn, get_settings(), [r.id for r in flapping_rows])
    return {
        "since": since.isoformat(),
        "incidents": [
            {
                "incident_id": r.id,
                "kind": r.kind,
                "signature": r.signature,
                "sample_error": r.sample_error,
                "state": "open" if r.resolved_at is None else "resolved",
                "opened_at": _iso(r.opened_at),
                "resolved_at": _iso(r.resolved_at),
                "members": r.members,
                "peak_members": r.peak_members,
            }
            for r in incidents
        ],
        "self_preservation": self_preservation_episodes(conn, since),
        "least_available": [
            {**w, "availability_percent": float(w["availability_percent"])} for w in dist.least
        ],
        "flapping": [
            {"workspace_id": r.id, "name": r.name, "status": r.status, "changes": changes[r.id]}
            for r in flapping_rows
        ],
        "availability": {
            "workspaces": dist.total,
            "mean_percent": None if dist.mean is None else round(float(dist.mean), 3),
            "distribution": {label: getattr(dist, f"b{n}") for n, (label, _) in enumerate(BUCKETS)},
        },
    }
