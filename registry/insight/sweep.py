"""The insight sweep (CONTRACT §13): incidents updated and resolved, flapping cleared.

Run by `registry.sweep_insight` on every beat tick. Each open incident is handled in
its own transaction under its key's advisory lock and row lock, re-read after both:
two sweeps at once (two beats) announce nothing twice, and a worker opening or
joining the incident waits for the decision instead of racing it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from registry.config import Settings
from registry.db import get_engine
from registry.insight.flapping import unflag_quiet
from registry.insight.keys import GROUP_UNREACHABLE, SHARED_ERROR, lock_keys
from registry.statuses import EventType
from registry.uow import UnitOfWork, record_events_on_commit, unit_of_work

UPDATE_EVERY_SECONDS = 30  # at most one `updated` event per incident per this

# Per kind: `n`, the members still failing (degraded; unreachable for a group), and
# `last_signal`, the newest change that made one.
_CURRENT = {
    SHARED_ERROR: """
        SELECT count(DISTINCT s.workspace_id) FILTER (WHERE w.status = 'degraded') AS n,
               max(s.at) AS last_signal
        FROM incidents i
        JOIN incident_signals s
          ON s.kind = i.kind AND s.key = i.key
         AND s.at >= i.opened_at - make_interval(secs => :window)
        JOIN workspaces w ON w.id = s.workspace_id
        WHERE i.id = :id""",
    GROUP_UNREACHABLE: """
        SELECT count(*) FILTER (WHERE c.status IN ('offline', 'awaiting_agent')) AS n,
               NULL::timestamptz AS last_signal
        FROM incidents i JOIN workspaces c ON c.parent_id = i.parent_id
        WHERE i.id = :id""",
}

_OPEN = text("SELECT id, kind, key FROM incidents WHERE resolved_at IS NULL ORDER BY id")


def _measure_sql(kind: str) -> Any:
    return text(
        f"""
        WITH cur AS ({_CURRENT[kind]}
        ), locked AS (
            SELECT id FROM incidents WHERE id = :id AND resolved_at IS NULL FOR UPDATE
        )
        UPDATE incidents i
        SET members = cur.n,
            peak_members = GREATEST(i.peak_members, cur.n),
            last_seen_at = CASE WHEN cur.n > 0 THEN now()
                                ELSE GREATEST(i.last_seen_at, cur.last_signal) END,
            updated_at = now()
        FROM cur, locked
        WHERE i.id = locked.id
        RETURNING i.id, i.kind, i.signature, i.members, i.peak_members, i.announced_members,
                  i.announced_at <= now() - make_interval(secs => :every) AS may_announce,
                  i.members = 0 AND i.last_seen_at <= now() - make_interval(secs => :window)
                      AS quiet,
                  EXTRACT(EPOCH FROM now() - i.opened_at) AS age
        """
    )


_MEASURE = {kind: _measure_sql(kind) for kind in _CURRENT}

# Signals older than the window whose key has no open incident are no one's members.
_PRUNE_SIGNALS = text(
    """
    DELETE FROM incident_signals WHERE ctid = ANY(ARRAY(
        SELECT s.ctid FROM incident_signals s
        WHERE s.at < now() - make_interval(secs => :window)
          AND NOT EXISTS (SELECT 1 FROM incidents i
                          WHERE i.resolved_at IS NULL AND i.kind = s.kind AND i.key = s.key)
        LIMIT :limit))
    """
)
SIGNAL_PRUNE_BATCH = 50_000

_ANNOUNCE = text("UPDATE incidents SET announced_at = now(), announced_members = :n WHERE id = :id")
_RESOLVE = text("UPDATE incidents SET resolved_at = now() WHERE id = :id")


def _incident_event(row: Any, state: str, **extra: Any) -> tuple[EventType, None, dict[str, Any]]:
    payload = {
        "state": state,
        "incident_id": row.id,
        "kind": row.kind,
        "signature": row.signature,
        "members": row.members,
        "peak_members": row.peak_members,
        **extra,
    }
    return (EventType.REGISTRY_INCIDENT, None, payload)


def review_incident(uow: UnitOfWork, settings: Settings, incident: Any) -> str | None:
    """Update or resolve one open incident; the state announced, if any."""
    lock_keys(uow.conn, incident.kind, [incident.key])
    row = uow.conn.execute(
        _MEASURE[incident.kind],
        {
            "id": incident.id,
            "every": UPDATE_EVERY_SECONDS,
            "window": settings.incident_window_seconds,
        },
    ).one_or_none()
    if row is None:  # resolved meanwhile by another sweep
        return None
    if row.quiet:
        uow.conn.execute(_RESOLVE, {"id": row.id})
        event = _incident_event(row, "resolved", duration_seconds=round(float(row.age)))
        record_events_on_commit(uow, [event])
        return "resolved"
    if row.members > row.announced_members and row.may_announce:
        uow.conn.execute(_ANNOUNCE, {"id": row.id, "n": row.members})
        record_events_on_commit(uow, [_incident_event(row, "updated")])
        return "updated"
    return None


def sweep_insight(settings: Settings, engine: Engine | None = None) -> dict[str, Any]:
    """One pass: every open incident, the flapping rows gone quiet, old signals."""
    engine = engine or get_engine()
    with engine.connect() as conn:
        open_incidents = conn.execute(_OPEN).all()
    announced: dict[str, int] = {}
    for incident in open_incidents:
        with unit_of_work(engine) as uow:
            state = review_incident(uow, settings, incident)
        if state:
            announced[state] = announced.get(state, 0) + 1
    with unit_of_work(engine) as uow:
        stable = unflag_quiet(uow.conn, settings)
        record_events_on_commit(uow, stable)
    window = settings.incident_window_seconds
    with engine.begin() as conn:
        pruned = conn.execute(
            _PRUNE_SIGNALS, {"window": window, "limit": SIGNAL_PRUNE_BATCH}
        ).rowcount
    return {
        "status": "ok",
        "changed": sum(announced.values()) + len(stable),
        "incidents": announced,
        "stable": len(stable),
        "signals_pruned": pruned,
    }
