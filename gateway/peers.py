"""The workspaces an agent may talk to, as a set (CONTRACT §9).

`registry.access.can_communicate` answers for one pair; filtering a busy event stream
for many agents needs the whole set at once, refreshed every few seconds, instead of
one query per event. The rule is the same walk, written from the caller's side: a
target is allowed when it is the caller, a sibling (same parent, or both at the root),
an ancestor of the caller, or a descendant of the caller, each walk bounded by
`MAX_DEPTH` levels (so a cycle terminates) and neither endpoint removed.
tests/test_gateway_ws_peers.py checks it against `can_communicate` pair by pair.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Connection, text

from registry.access import MAX_DEPTH

_TALK_SET = text(
    """
    WITH RECURSIVE
    me AS (
        SELECT id, parent_id FROM workspaces
         WHERE id = CAST(:caller AS uuid) AND status <> 'removed'
    ),
    up(id, parent_id, depth) AS (        -- the caller's ancestors
        SELECT p.id, p.parent_id, 1 FROM me JOIN workspaces p ON p.id = me.parent_id
        UNION ALL
        SELECT p.id, p.parent_id, u.depth + 1
          FROM up u JOIN workspaces p ON p.id = u.parent_id
         WHERE u.depth < :max_depth
    ),
    down(id, depth) AS (                 -- the caller's descendants
        SELECT c.id, 1 FROM me JOIN workspaces c ON c.parent_id = me.id
        UNION ALL
        SELECT c.id, d.depth + 1
          FROM down d JOIN workspaces c ON c.parent_id = d.id
         WHERE d.depth < :max_depth
    )
    SELECT w.id FROM workspaces w, me
     WHERE w.status <> 'removed'
       AND (w.id = me.id
            OR w.parent_id = me.parent_id   -- NULL = NULL is not true: roots are no siblings
            OR w.id IN (SELECT id FROM up)
            OR w.id IN (SELECT id FROM down))
    """
)


def talk_set(conn: Connection, caller: UUID | str) -> frozenset[str]:
    """Ids (lowercase text) of the workspaces `caller` may talk to, itself included;
    empty when the caller is unknown or removed."""
    rows = conn.execute(_TALK_SET, {"caller": str(caller), "max_depth": MAX_DEPTH}).scalars()
    return frozenset(str(r) for r in rows)
