"""Incidents (CONTRACT §13): many workspaces failing for one cause, as one record.

A degradation signals its sample error's signature (`shared_error`, one row in
`incident_signals`); a workspace marked unreachable counts for its parent
(`group_unreachable`, read from its recorded event). When INCIDENT_MIN_MEMBERS
distinct workspaces did so within the window, an incident opens, in the transaction
of the change that completed the count. The insight sweep (`registry.insight.sweep`)
updates and resolves it.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.db import array_literal
from registry.insight import flapping
from registry.insight.flapping import FLAG_CTES
from registry.insight.keys import GROUP_UNREACHABLE, SHARED_ERROR, lock_keys
from registry.insight.signature import signature
from registry.statuses import EventType

# "Many workspaces under one parent marked unreachable within a minute".
GROUP_WINDOW_SECONDS = 60
SAMPLE_MAX_CHARS = 512  # the sample text an incident keeps and announces

Recorded = tuple[EventType, UUID | str | None, dict[str, Any]]


class _Flagged(NamedTuple):
    id: str
    changes: int


# The members of a key's window already recorded, per kind: (key, workspace_id) rows
# for the keys in `wanted` (text keys).
_RECORDED = {
    SHARED_ERROR: """
        SELECT s.key, s.workspace_id FROM incident_signals s
        WHERE s.kind = 'shared_error' AND s.key IN (SELECT key FROM wanted)
          AND s.at > now() - make_interval(secs => :window)""",
    GROUP_UNREACHABLE: """
        SELECT CAST(c.parent_id AS text) AS key, e.workspace_id
        FROM workspaces c JOIN structure_events e ON e.workspace_id = c.id
        WHERE c.parent_id IN (SELECT CAST(key AS uuid) FROM wanted)
          AND e.event_type IN ('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT')
          AND e.created_at > now() - make_interval(secs => :window)""",
}


def _note_sql(kind: str, *, flags: bool = False) -> Any:
    """Run under the keys' locks (so the previous holder's events are committed and
    visible): find each key's open incident; count the window of the keys without one
    (this batch's events may not be inserted yet: they are added by UNION); open what
    reached the threshold. `flags`: the batch's flapping count too (registry.insight.
    flapping's FLAG_CTES), its flagged rows returned with `is_flap` (one round trip
    less per batch)."""
    flag_ctes = f", {FLAG_CTES}" if flags else ""
    flag_rows = "UNION ALL SELECT NULL, id, NULL, NULL, changes, true FROM flagged" if flags else ""
    return text(
        f"""
        WITH input AS (
            SELECT u.* FROM unnest(CAST(:keys AS text[]), CAST(:ws AS uuid[]),
                                   CAST(:samples AS text[])) AS u(key, workspace_id, sample_error)
            -- :verify: only a status really changed in this transaction (see
            -- registry.insight.flapping); a heartbeat batch's changes are all real.
            WHERE NOT :verify OR EXISTS (
                SELECT 1 FROM workspaces w
                WHERE w.id = u.workspace_id AND w.status_changed_at = now())
        ), ins AS (
            INSERT INTO incident_signals (kind, key, workspace_id)
            SELECT '{kind}', key, workspace_id FROM input WHERE {"true" if kind == SHARED_ERROR else "false"}
        ), existing AS (
            SELECT i.id, i.key FROM incidents i
            WHERE i.kind = '{kind}' AND i.resolved_at IS NULL AND i.key IN (SELECT key FROM input)
        ), wanted AS (
            SELECT key FROM input EXCEPT SELECT key FROM existing
        ), recent AS (
            {_RECORDED[kind]}
            UNION
            SELECT key, workspace_id FROM input WHERE key IN (SELECT key FROM wanted)
        ), counts AS (
            SELECT key, count(*) AS n FROM recent GROUP BY key
        ), opened AS (
            INSERT INTO incidents (kind, key, signature, sample_error, parent_id,
                                   members, peak_members, announced_members)
            SELECT '{kind}', c.key, c.key,
                   (SELECT left(sample_error, :sample_max) FROM input
                    WHERE input.key = c.key AND sample_error IS NOT NULL LIMIT 1),
                   {"CAST(c.key AS uuid)" if kind == GROUP_UNREACHABLE else "NULL"},
                   c.n, c.n, c.n
            FROM counts c WHERE c.n >= :min_members
            RETURNING id, key, sample_error, members
        ){flag_ctes}
        SELECT id, key, false AS is_new, NULL AS sample_error, CAST(NULL AS bigint) AS n,
               false AS is_flap FROM existing
        UNION ALL SELECT id, key, true, sample_error, members, false FROM opened
        {flag_rows}
        """
    )


_NOTE = {kind: _note_sql(kind) for kind in _RECORDED}
_NOTE_FLAGGING = _note_sql(SHARED_ERROR, flags=True)


def _note(
    conn: Connection,
    settings: Settings,
    kind: str,
    window: int,
    signals: list[tuple[str, str, str | None]],
    *,
    verify: bool = False,
    flags: dict[str, Any] | None = None,
) -> list[Any]:
    """(key, workspace, sample) signals; the open incidents of their keys, new or not.
    `flags`: flapping.flag_params of the batch, counted in the same statement (its
    flagged rows come back with `is_flap`)."""
    lock_keys(conn, kind, (key for key, _, _ in signals))
    return conn.execute(
        _NOTE_FLAGGING if flags is not None else _NOTE[kind],
        {
            **(flags or {}),
            "keys": [key for key, _, _ in signals],
            "ws": [ws for _, ws, _ in signals],
            "samples": [sample for _, _, sample in signals],
            "window": window,
            "min_members": settings.incident_min_members,
            "sample_max": SAMPLE_MAX_CHARS,
            "verify": verify,
        },
    ).all()


def opened_event(row: Any, kind: str) -> Recorded:
    payload: dict[str, Any] = {
        "state": "opened",
        "incident_id": row.id,
        "kind": kind,
        "signature": row.key,
        "sample_error": row.sample_error,
        "members": row.n,
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
    changed: list[str] | None = None,
) -> list[Recorded]:
    """Signal each WORKSPACE_DEGRADED (workspace, payload) about to be recorded; tags a
    member of an open incident with its `incident_id` (in place); returns the
    REGISTRY_INCIDENT events of the incidents this batch opened, then (with `changed`,
    the batch's status changes, one id each) the WORKSPACE_FLAPPING events of the rows
    its changes flagged, counted in the same statement."""
    signals = []
    for ws, payload in degraded:
        sample = payload.get("sample_error")
        key = signature(sample)
        signals.append((key, ws, sample if isinstance(sample, str) else None))
    flags = None
    if changed is not None:
        flags = flapping.flag_params(settings, changed, pending=True, verify=verify)
    found = _note(
        conn,
        settings,
        SHARED_ERROR,
        settings.incident_window_seconds,
        signals,
        verify=verify,
        flags=flags,
    )
    rows = [row for row in found if not row.is_flap]
    by_key = {row.key: row.id for row in rows}
    for (_, payload), (key, _, _) in zip(degraded, signals, strict=True):
        if key in by_key:
            payload["incident_id"] = by_key[key]
    opened = [opened_event(row, SHARED_ERROR) for row in rows if row.is_new]
    flagged = [(row.key, row.n) for row in found if row.is_flap]
    return opened + flapping.flapping_events(settings, [_Flagged(*f) for f in flagged])


_PARENTS = text(
    """
    SELECT id::text AS id, parent_id::text AS parent_id FROM workspaces
    WHERE id = ANY(CAST(:ids AS uuid[])) AND parent_id IS NOT NULL
    """
)


def note_unreachable(conn: Connection, settings: Settings, ids: list[str]) -> list[Recorded]:
    """Workspaces just marked unreachable (their events recorded), keyed by parent."""
    parents = conn.execute(_PARENTS, {"ids": array_literal(ids)}).all()
    if not parents:
        return []
    signals = [(row.parent_id, row.id, None) for row in parents]
    rows = _note(conn, settings, GROUP_UNREACHABLE, GROUP_WINDOW_SECONDS, signals)
    return [opened_event(row, GROUP_UNREACHABLE) for row in rows if row.is_new]
