"""Incidents (CONTRACT §13): many workspaces failing for one cause, as one record.

A degradation is a signal keyed by its sample error's signature (`shared_error`); a
workspace marked unreachable is a signal keyed by its parent (`group_unreachable`).
When INCIDENT_MIN_MEMBERS distinct workspaces signal one key within the window, an
incident opens, in the transaction of the signal that completed the count. The
insight sweep (`registry.insight.sweep`) updates and resolves it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.insight.keys import GROUP_UNREACHABLE, SHARED_ERROR, lock_keys
from registry.insight.signature import signature
from registry.statuses import EventType

# "Many workspaces under one parent marked unreachable within a minute".
GROUP_WINDOW_SECONDS = 60
SAMPLE_MAX_CHARS = 512  # the sample text an incident keeps and announces

Recorded = tuple[EventType, UUID | str | None, dict[str, Any]]

# One statement per batch, run under the keys' locks (so the previous holder's signals
# are committed and visible): record the signals, count each key's window (the batch's
# own signals are not visible to the statement's snapshot: they are added by UNION),
# open what reached the threshold, and add the members.
_NOTE_SIGNALS = text(
    """
    WITH input AS (
        SELECT u.* FROM unnest(CAST(:keys AS text[]), CAST(:ws AS uuid[]), CAST(:samples AS text[]))
            AS u(key, workspace_id, sample_error)
        -- :verify: only a status really changed in this transaction (see
        -- registry.insight.flapping).
        JOIN workspaces w ON w.id = u.workspace_id
            AND (NOT :verify OR w.status_changed_at = now())
    ), ins AS (
        INSERT INTO incident_signals (kind, key, workspace_id, sample_error)
        SELECT :kind, key, workspace_id, sample_error FROM input
    ), existing AS (
        SELECT i.id, i.key FROM incidents i
        WHERE i.kind = :kind AND i.resolved_at IS NULL AND i.key IN (SELECT key FROM input)
    ), recent AS (
        -- The window is counted only for keys without an open incident: once one is
        -- open, a batch of its signature costs no scan of the window.
        SELECT s.key, s.workspace_id FROM incident_signals s
        WHERE s.kind = :kind AND s.key IN (SELECT key FROM input EXCEPT SELECT key FROM existing)
          AND s.at > now() - make_interval(secs => :window)
        UNION
        SELECT key, workspace_id FROM input WHERE key NOT IN (SELECT key FROM existing)
    ), counts AS (
        SELECT key, count(*) AS n FROM recent GROUP BY key
    ), opened AS (
        INSERT INTO incidents (kind, key, signature, sample_error, parent_id,
                               members, peak_members, announced_members)
        SELECT :kind, c.key, c.key,
               (SELECT left(sample_error, :sample_max) FROM input WHERE input.key = c.key LIMIT 1),
               CASE WHEN :kind = 'group_unreachable' THEN CAST(c.key AS uuid) END,
               c.n, c.n, c.n
        FROM counts c
        WHERE c.n >= :min_members
        RETURNING id, key, sample_error, members
    ), inc AS (
        SELECT id, key, false AS is_new, NULL AS sample_error, NULL AS n FROM existing
        UNION ALL SELECT id, key, true, sample_error, members FROM opened
    ), mem AS (
        -- A new incident takes every workspace of its window; an open one the batch's
        -- (a member signalling again refreshes its time: the incident is not quiet).
        INSERT INTO incident_members (incident_id, workspace_id)
        SELECT DISTINCT inc.id, m.workspace_id
        FROM inc JOIN (SELECT key, workspace_id, true AS fresh FROM recent
                       UNION ALL SELECT key, workspace_id, false FROM input) m
             ON m.key = inc.key AND m.fresh = inc.is_new
        ON CONFLICT (incident_id, workspace_id) DO UPDATE SET last_signal_at = now()
    )
    SELECT id, key, is_new, sample_error, n FROM inc
    """
)


def _note(
    conn: Connection,
    settings: Settings,
    kind: str,
    window: int,
    signals: list[tuple[str, str, str | None]],
    *,
    verify: bool = False,
) -> list[Any]:
    """Record (key, workspace, sample) signals; the incidents they belong to, by key."""
    lock_keys(conn, kind, (key for key, _, _ in signals))
    return conn.execute(
        _NOTE_SIGNALS,
        {
            "kind": kind,
            "keys": [key for key, _, _ in signals],
            "ws": [ws for _, ws, _ in signals],
            "samples": [sample for _, _, sample in signals],
            "window": window,
            "min_members": settings.incident_min_members,
            "sample_max": SAMPLE_MAX_CHARS,
            "verify": verify,
        },
    ).all()


def opened_event(row: Any, kind: str, *, members: int) -> Recorded:
    payload: dict[str, Any] = {
        "state": "opened",
        "incident_id": row.id,
        "kind": kind,
        "signature": row.key,
        "sample_error": row.sample_error,
        "members": members,
    }
    if kind == GROUP_UNREACHABLE:
        payload["parent_id"] = row.key
    return (EventType.REGISTRY_INCIDENT, None, payload)


def note_degradations(
    conn: Connection,
    settings: Settings,
    degraded: list[tuple[str, dict[str, Any]]],
    *,
    verify: bool = False,
) -> list[Recorded]:
    """Signal each WORKSPACE_DEGRADED (workspace, payload) about to be recorded; tags
    the payloads of an incident's members with its `incident_id` (in place) and
    returns the REGISTRY_INCIDENT events of the incidents this batch opened."""
    signals = []
    for ws, payload in degraded:
        sample = payload.get("sample_error")
        signals.append((signature(sample), ws, sample if isinstance(sample, str) else None))
    rows = _note(
        conn, settings, SHARED_ERROR, settings.incident_window_seconds, signals, verify=verify
    )
    by_key = {row.key: row.id for row in rows}
    for (key, _, _), (_, payload) in zip(signals, degraded, strict=True):
        if key in by_key:
            payload["incident_id"] = by_key[key]
    return [opened_event(row, SHARED_ERROR, members=row.n) for row in rows if row.is_new]


_PARENTS = text(
    """
    SELECT id::text AS id, parent_id::text AS parent_id FROM workspaces
    WHERE id = ANY(CAST(:ids AS uuid[])) AND parent_id IS NOT NULL
    """
)


def note_unreachable(conn: Connection, settings: Settings, ids: list[str]) -> list[Recorded]:
    """Signal workspaces just marked unreachable, keyed by their parent."""
    parents = conn.execute(_PARENTS, {"ids": ids}).all()
    if not parents:
        return []
    signals = [(row.parent_id, row.id, None) for row in parents]
    rows = _note(conn, settings, GROUP_UNREACHABLE, GROUP_WINDOW_SECONDS, signals)
    return [opened_event(row, GROUP_UNREACHABLE, members=row.n) for row in rows if row.is_new]
