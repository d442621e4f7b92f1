"""The fleet report (CONTRACT §13): incidents, self-preservation episodes, the least
available and the flapping workspaces, and the fleet's availability distribution.

Availability follows registry.insight.history; at fleet scale it is computed in SQL,
one pass over the window's status events (see `_MOVING`): a workspace without a
status event in the window kept its current status all along.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from registry.config import get_settings
from registry.insight.flapping import recent_changes
from registry.insight.history import DOWN, STATUS_EVENT_TYPES, UP
from registry.statuses import STATUS_AFTER_EVENT, EventType

LEAST_AVAILABLE = 10
REPORT_WORK_MEM = "256MB"
# Upper-open buckets of the distribution, best first: (label, lowest percent).
BUCKETS: tuple[tuple[str, float], ...] = (
    ("100%", 100.0),
    ("99.9-100%", 99.9),
    ("99-99.9%", 99.0),
    ("95-99%", 95.0),
    ("90-95%", 90.0),
    ("<90%", 0.0),
)

# The status a status event left its workspace in is its type's; the one it came
# from is in its payload (a degradation always comes from online).
_BEFORE_KEY = {EventType.WORKSPACE_ONLINE: "recovered_from", EventType.WORKSPACE_DEGRADED: None}


def _delta_sql(group: frozenset[str]) -> str:
    """Per event: 1 if it entered `group`, -1 if it left it, else 0, as one CASE on its
    type with the group inlined (one payload lookup at most, no array compares)."""

    def member(status: str) -> str:
        return str(int(status in group))

    branches = []
    for event_type, after in STATUS_AFTER_EVENT.items():
        key = _BEFORE_KEY.get(event_type, "previous_status")
        if key is None:
            branch = f"{int(after in group) - int('online' in group)}"
        else:
            whens = " ".join(f"WHEN '{s}' THEN {member(s)}" for s in sorted(group))
            branch = f"{member(after)} - CASE e.payload->>'{key}' {whens} ELSE 0 END"
        branches.append(f"WHEN '{event_type}' THEN {branch}")
    return f"CASE e.event_type {' '.join(branches)} ELSE 0 END"


def _is(status_sql: str, group: str) -> str:
    return f"CAST(COALESCE({status_sql} = ANY(:{group}), false) AS int)"


# No sort, no per-workspace timeline: up time is the integral of "is up", which
# changes at each event by (up after - up before). With the current status as the
# end point, up time = (up now - sum of changes) * span + sum of (change * its age),
# where span runs from the window's start (or the workspace's creation), and
# sum of (change * age) = sum of changes * now - sum of (change * its time). Likewise
# for counted (up or down) time. One hash aggregate over the window's status events.
# Times are whole microseconds since the window's start held in float8: integers
# below 2^53, so every sum is exact (as numeric's would be) at float speed, which
# aggregates several times faster and in a third of the memory.
_US = "round(date_part('epoch', {} - CAST(:since AS timestamptz)) * 1000000)"
_NOW = _US.format("now()")
_SPAN = f"({_NOW} - GREATEST(0, {_US.format('w.created_at')}))"
_MOVING = text(
    f"""
    WITH ev AS (
        SELECT e.workspace_id, {_US.format("e.created_at")} AS t,
               {_delta_sql(UP)} AS d_up, {_delta_sql(UP | DOWN)} AS d_cnt
        FROM structure_events e
        WHERE e.created_at >= :since AND e.event_type = ANY(:types)
          AND e.workspace_id IS NOT NULL
    ), moving AS (
        SELECT workspace_id, sum(d_up) AS su, sum(d_up * t) AS sut,
               sum(d_cnt) AS sc, sum(d_cnt * t) AS sct
        FROM ev GROUP BY workspace_id
    ), per AS (
        SELECT m.workspace_id, w.status,
               ({_is("w.status", "up")} - m.su) * {_SPAN} + m.su * {_NOW} - m.sut AS up_time,
               ({_is("w.status", "counted")} - m.sc) * {_SPAN} + m.sc * {_NOW} - m.sct
                   AS counted_time
        FROM moving m JOIN workspaces w ON w.id = m.workspace_id
    ), pct AS (
        SELECT workspace_id, status, up_time AS u, counted_time AS c,
               LEAST(100.0, GREATEST(0.0, 100.0 * up_time / counted_time)) AS pct
        FROM per WHERE counted_time > 0
    )
    SELECT (SELECT COALESCE(json_agg(json_build_object('status', status, 'n', n)), '[]')
            FROM (SELECT status, count(*) AS n FROM per GROUP BY status) c) AS moved,
           count(*) FILTER (WHERE u >= c) AS b0,
           count(*) FILTER (WHERE 1000 * u >= 999 * c AND u < c) AS b1,
           count(*) FILTER (WHERE 100 * u >= 99 * c AND 1000 * u < 999 * c) AS b2,
           count(*) FILTER (WHERE 100 * u >= 95 * c AND 100 * u < 99 * c) AS b3,
           count(*) FILTER (WHERE 10 * u >= 9 * c AND 100 * u < 95 * c) AS b4,
           count(*) FILTER (WHERE 10 * u < 9 * c) AS b5,
           count(*) AS total, COALESCE(sum(pct), 0) AS pct_sum,
           (SELECT COALESCE(json_agg(json_build_object(
                       'workspace_id', l.workspace_id, 'availability_percent', l.pct)), '[]')
            FROM (SELECT workspace_id, round(CAST(pct AS numeric), 3) AS pct FROM pct WHERE u < c
                  ORDER BY pct, workspace_id LIMIT :limit) l) AS least
    FROM pct
    """
)
_BY_STATUS = text(
    "SELECT status, count(*) AS n FROM workspaces WHERE status = ANY(:counted) GROUP BY status"
)
# Down all along (no status event in the window): 0 %, the least available first.
_STILL_DOWN = text(
    """
    SELECT w.id::text AS id FROM workspaces w
    WHERE w.status = ANY(:down)
      AND NOT EXISTS (SELECT 1 FROM structure_events e
                      WHERE e.workspace_id = w.id AND e.created_at >= :since
                        AND e.event_type = ANY(:types))
    ORDER BY w.id LIMIT :limit
    """
)
_NAMES = text(
    "SELECT id::text AS id, name, status FROM workspaces WHERE id = ANY(CAST(:ids AS uuid[]))"
)


def availability(conn: Connection, since: datetime, limit: int) -> dict[str, Any]:
    """The fleet's availability distribution, mean, and least available workspaces."""
    params = {
        "since": since,
        "types": STATUS_EVENT_TYPES,
        "up": sorted(UP),
        "down": sorted(DOWN),
        "counted": sorted(UP | DOWN),
        "limit": limit,
    }
    # One group per workspace that changed in the window (up to the fleet): room to
    # aggregate in memory instead of spilling to disk, for this transaction only.
    conn.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
    # One statement whose cost is its rows, not its plan: compiling it (JIT) cost
    # seconds more than it saved.
    conn.execute(text("SET LOCAL jit = off"))
    moving = conn.execute(_MOVING, params).one()
    moved = {m["status"]: m["n"] for m in moving.moved}
    # Workspaces without a status event in the window kept their current status.
    still_up = still_down = 0
    for row in conn.execute(_BY_STATUS, params):
        still = row.n - moved.get(row.status, 0)
        if row.status in UP:
            still_up += still
        else:
            still_down += still
    least = [(float(w["availability_percent"]), w["workspace_id"]) for w in moving.least]
    if still_down:
        down = conn.execute(_STILL_DOWN, params).scalars()
        least += [(0.0, ws) for ws in down]
    least = sorted(least)[:limit]
    names = {r.id: r for r in conn.execute(_NAMES, {"ids": [ws for _, ws in least]})}
    total = moving.total + still_up + still_down
    counts = [moving.b0 + still_up, moving.b1, moving.b2, moving.b3, moving.b4]
    counts.append(moving.b5 + still_down)
    return {
        "least": [
            {
                "workspace_id": ws,
                "name": names[ws].name,
                "status": names[ws].status,
                "availability_percent": pct,
            }
            for pct, ws in least
        ],
        "workspaces": total,
        "mean_percent": (
            None if total == 0 else round((float(moving.pct_sum) + 100.0 * still_up) / total, 3)
        ),
        "distribution": {label: n for (label, _), n in zip(BUCKETS, counts, strict=True)},
    }


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
    fleet = availability(conn, since, limit)
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
        "least_available": fleet["least"],
        "flapping": [
            {"workspace_id": r.id, "name": r.name, "status": r.status, "changes": changes[r.id]}
            for r in flapping_rows
        ],
        "availability": {
            "workspaces": fleet["workspaces"],
            "mean_percent": fleet["mean_percent"],
            "distribution": fleet["distribution"],
        },
    }
