"""Read-only answers about workspaces for producers in front of the registry (the gateway).

State, address and peers of a workspace, read from PostgreSQL. Nothing here writes:
every change goes through the queue and the worker (CONTRACT §4). Who may talk to whom
is decided by `registry.access.can_communicate` alone; the peers query only gathers the
structural relatives it could allow.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from registry.access import MAX_DEPTH, can_communicate
from registry.statuses import Status

# A workspace's peers are its relatives; a list longer than this is cut (ordered by name):
# a tool listing them for an agent has no use for thousands.
PEERS_LIMIT = 500

_STATE = text("SELECT id, status FROM workspaces WHERE id = :id")
_ADDRESS = text("SELECT id, url, name FROM workspaces WHERE id = :id AND status <> 'removed'")

# Candidates: ancestors and descendants (each walk bounded like can_communicate's, so a
# corrupt parent chain terminates) and the rows sharing the workspace's parent. A
# superset of what can_communicate allows; each candidate is then put to it.
_PEER_CANDIDATES = text(
    """
    WITH RECURSIVE
    me AS (SELECT id, parent_id FROM workspaces WHERE id = :id AND status <> 'removed'),
    up(id, parent_id, depth) AS (
        SELECT id, parent_id, 0 FROM me
        UNION ALL
        SELECT w.id, w.parent_id, up.depth + 1
          FROM up JOIN workspaces w ON w.id = up.parent_id
         WHERE up.depth < :max_depth
    ),
    down(id, depth) AS (
        SELECT id, 0 FROM me
        UNION ALL
        SELECT w.id, down.depth + 1
          FROM down JOIN workspaces w ON w.parent_id = down.id
         WHERE down.depth < :max_depth
    )
    SELECT w.id, w.name, w.status, w.url, w.parent_id, w.active_tasks, w.agent_card, w.tier
      FROM workspaces w
     WHERE w.status <> 'removed' AND w.id <> :id AND EXISTS (SELECT 1 FROM me) AND (
               w.id IN (SELECT id FROM up)
               OR w.id IN (SELECT id FROM down)
               OR w.parent_id IS NOT DISTINCT FROM (SELECT parent_id FROM me)
           )
     ORDER BY w.name, w.id
     LIMIT :limit
    """
)


def workspace_state(conn: Connection, workspace_id: UUID) -> dict[str, Any] | None:
    """`{workspace_id, status, paused, deleted: false}`, or None if unknown or removed."""
    row = conn.execute(_STATE, {"id": workspace_id}).first()
    if row is None or row.status == Status.REMOVED:
        return None
    return {
        "workspace_id": str(row.id),
        "status": row.status,
        "paused": row.status == Status.PAUSED,
        "deleted": False,
    }


def workspace_address(conn: Connection, workspace_id: UUID) -> dict[str, Any] | None:
    """`{id, url, name}` of a workspace that is not removed, else None."""
    row = conn.execute(_ADDRESS, {"id": workspace_id}).first()
    if row is None:
        return None
    return {"id": str(row.id), "url": row.url or "", "name": row.name}


def peers(conn: Connection, workspace_id: UUID) -> list[dict[str, Any]] | None:
    """The workspaces `workspace_id` may talk to (itself excluded), or None if it is
    unknown or removed."""
    if workspace_state(conn, workspace_id) is None:
        return None
    rows = conn.execute(
        _PEER_CANDIDATES, {"id": workspace_id, "max_depth": MAX_DEPTH, "limit": PEERS_LIMIT}
    ).all()
    return [
        {
            "id": str(row.id),
            "name": row.name,
            "status": row.status,
            "url": row.url or "",
            "parent_id": str(row.parent_id) if row.parent_id else None,
            "active_tasks": row.active_tasks,
            "agent_card": row.agent_card,
            "tier": row.tier,
        }
        for row in rows
        if can_communicate(conn, workspace_id, row.id)
    ]
