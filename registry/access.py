"""Who may talk to whom (CONTRACT §9): `can_communicate(caller, target)`.

Allowed when any of these holds:

- caller = target;
- siblings: the same (non-null) `parent_id`. Two workspaces that both have no
  parent are NOT siblings (CONTRACT §9 as amended by §12, like the original's newest
  registry): unrelated top-level workspaces, often of different teams, must not reach
  each other just because nobody nested them;
- the caller is an ancestor of the target (any number of levels up, within the bound);
- the caller is a descendant of the target (likewise).

Everything else is refused, and so is every doubt (fail secure):

- an unknown caller or target → False;
- a `removed` workspace counts as unknown → False. It is a tombstone: nothing may
  bring it back (CONTRACT §3), so it must not keep talking either. Only the two endpoints'
  status matters: a removed *intermediate* ancestor still links its descendants to
  the ancestors above it, because its row (and `parent_id`) stays and the structure
  the operator built is unchanged;
- a failing lookup (database down, bad id) → False, logged.

The answer is ONE recursive query: it walks `parent_id` upwards from both ids at
once, at most `MAX_DEPTH` levels. The bound is what makes a corrupt parent chain
(a cycle such as A→B→A) terminate; the price is that an ancestor more than
`MAX_DEPTH` levels above a workspace is not recognised as one (→ False, fail secure).
Real hierarchies are a few levels deep.
"""

from __future__ import annotations

import logging
from uuid import UUID

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

# Levels walked above each workspace; an ancestor exactly MAX_DEPTH levels up is found.
MAX_DEPTH = 32

# chain(origin, id, parent_id, depth): every ancestor of each endpoint, itself at
# depth 0. An endpoint that is unknown or removed has no depth-0 row, so its LEFT JOIN
# gives NULLs and the answer is False. The recursive step does not look at status:
# see the module docstring for why intermediate removed rows still link the chain.
_QUERY = text(
    """
    WITH RECURSIVE chain(origin, id, parent_id, depth) AS (
        SELECT w.id, w.id, w.parent_id, 0
          FROM workspaces w
         WHERE w.id IN (CAST(:caller AS uuid), CAST(:target AS uuid))
           AND w.status <> 'removed'
        UNION ALL
        SELECT c.origin, p.id, p.parent_id, c.depth + 1
          FROM chain c
          JOIN workspaces p ON p.id = c.parent_id
         WHERE c.depth < :max_depth
    )
    SELECT c.id IS NOT NULL AND t.id IS NOT NULL AND (
               c.id = t.id
               OR c.parent_id = t.parent_id  -- siblings; two roots (NULL) are not
               OR EXISTS (SELECT 1 FROM chain a                -- caller is an ancestor
                           WHERE a.origin = t.id AND a.depth > 0 AND a.id = c.id)
               OR EXISTS (SELECT 1 FROM chain d                -- caller is a descendant
                           WHERE d.origin = c.id AND d.depth > 0 AND d.id = t.id)
           ) AS allowed
      FROM (SELECT 1) AS one
      LEFT JOIN chain c ON c.origin = CAST(:caller AS uuid) AND c.depth = 0
      LEFT JOIN chain t ON t.origin = CAST(:target AS uuid) AND t.depth = 0
    """
)


def can_communicate(conn: Connection, caller_id: UUID, target_id: UUID) -> bool:
    """True when `caller_id` may talk to `target_id` (rules in the module docstring).

    Runs one statement on `conn`. On a database error it logs and returns False; the
    caller's transaction on `conn`, if any, is then aborted and must be rolled back.
    """
    try:
        allowed = conn.execute(
            _QUERY,
            {"caller": str(caller_id), "target": str(target_id), "max_depth": MAX_DEPTH},
        ).scalar_one()
    except SQLAlchemyError:
        log.exception(
            "can_communicate(%s, %s) lookup failed; refusing (fail secure)", caller_id, target_id
        )
        return False
    return bool(allowed)


def can_communicate_ids(engine: Engine, caller_id: UUID, target_id: UUID) -> bool:
    """`can_communicate` on a connection of its own; False if none can be opened."""
    try:
        with engine.connect() as conn:
            return can_communicate(conn, caller_id, target_id)
    except SQLAlchemyError:  # connecting itself failed (database down, pool exhausted)
        log.exception(
            "can_communicate(%s, %s): no database connection; refusing (fail secure)",
            caller_id,
            target_id,
        )
        return False


def denial_reason(conn: Connection, caller_id: UUID, target_id: UUID) -> str:
    """Why `can_communicate` said no, for humans and result objects (one PK lookup).

    Names the field of an unknown or removed endpoint; otherwise the two are unrelated.
    """
    try:
        rows = conn.execute(
            text("SELECT id, status, parent_id FROM workspaces WHERE id IN (:caller, :target)"),
            {"caller": caller_id, "target": target_id},
        ).all()
    except SQLAlchemyError:  # e.g. the transaction was aborted by a failed check
        return "lookup failed; refused (fail secure)"
    statuses = {row.id: row.status for row in rows}
    for field, ws in (("caller_id", caller_id), ("target_id", target_id)):
        status = statuses.get(ws)
        if status is None:
            return f"{field}: unknown workspace {ws}"
        if status == "removed":
            return f"{field}: workspace {ws} was removed"
    if all(row.parent_id is None for row in rows):
        return "not related: two workspaces without a parent are not siblings"
    return "not related: neither the same workspace, siblings, nor ancestor and descendant"
