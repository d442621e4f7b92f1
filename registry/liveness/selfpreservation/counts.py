"""Workspaces per status without counting the fleet (CONTRACT §5: a sweep never counts it).

Migration 0003 keeps two tables:

- `workspace_status_counts` (status → n): the folded counts;
- `workspace_status_changes` (from_status, to_status, n): deltas not folded yet.

Triggers on `workspaces` append one delta row per status change (per row for UPDATE,
grouped per statement for INSERT and DELETE) in the same transaction as the change,
whoever writes the row. A rolled-back or crashed transaction takes its deltas with it;
a committed one always has them. Appends never conflict, so concurrent writers never
wait on a counter row (no hot row, no deadlock with the workspaces they lock).

The true count of a status is `counts + pending deltas`, read in ONE statement (one
snapshot: a fold committing between two reads could otherwise count a delta twice or
not at all). Folding moves a bounded batch of deltas into the counts in one statement,
under a try-lock so concurrent folders skip instead of queueing; reading costs the
number of deltas since the last fold, i.e. O(changes), never O(fleet).

A set-based marking statement (hundreds of rows) writes its deltas itself instead: one
row per (from, to) pair, from its own UPDATE's RETURNING (`deltas_cte`), while
`records_its_deltas` has the row trigger skip it (migration 0004: a transaction-local
setting in the trigger's WHEN). Same transaction, same rows, one INSERT instead of
a PL/pgSQL call and an INSERT per row.

`reconcile` replaces the counts by an exact `count(*) GROUP BY status` and drops the
deltas that count already includes (the ones visible in its snapshot), all in one
statement; it runs rarely (`registry.reconcile_status_counts`) and corrects what no
trigger could see (triggers disabled for a bulk load, manual edits of the counts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, text

from registry.statuses import Status

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key shared by fold, reconcile (one writer of the counts at a time).
COUNTS_LOCK_KEY = 0x5E1F_C0DE
FOLD_BATCH = 50_000
# Fold once this many deltas wait: reading them costs less than folding them (a fold
# deletes and logs every row), so small amounts are only read, never written twice.
FOLD_AFTER = 2_000

LIVE_STATUSES: tuple[Status, ...] = (Status.ONLINE, Status.DEGRADED)
_LIVE_SQL = ", ".join(f"'{s}'" for s in LIVE_STATUSES)

_FOLD = text(
    """
    WITH moved AS (
        DELETE FROM workspace_status_changes
        WHERE ctid = ANY(ARRAY(SELECT ctid FROM workspace_status_changes LIMIT :limit))
        RETURNING from_status, to_status, n
    ), delta AS (
        SELECT status, sum(n) AS n FROM (
            SELECT to_status AS status, n FROM moved WHERE to_status IS NOT NULL
            UNION ALL
            SELECT from_status, -n FROM moved WHERE from_status IS NOT NULL
        ) d
        GROUP BY status
        ORDER BY status
    ), folded AS (
        INSERT INTO workspace_status_counts AS c (status, n)
        SELECT status, n FROM delta
        ON CONFLICT (status) DO UPDATE SET n = c.n + EXCLUDED.n
    )
    SELECT count(*) FROM moved
    """
)

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")

# All subqueries run in the statement's one snapshot.
LIVE_COUNT = text(
    f"""
    SELECT
        (SELECT COALESCE(sum(n), 0) FROM workspace_status_counts
         WHERE status IN ({_LIVE_SQL}))
      + d.live_delta AS live,
        d.pending
    FROM (
        SELECT COALESCE(sum(CASE WHEN to_status IN ({_LIVE_SQL}) THEN n ELSE 0 END)
                      - sum(CASE WHEN from_status IN ({_LIVE_SQL}) THEN n ELSE 0 END), 0)
                   AS live_delta,
               count(*) AS pending
        FROM workspace_status_changes
    ) d
    """
)

_BELIEVED = """
    SELECT status, sum(n) AS n FROM (
        SELECT status, n FROM workspace_status_counts
        UNION ALL
        SELECT to_status, n FROM workspace_status_changes WHERE to_status IS NOT NULL
        UNION ALL
        SELECT from_status, -n FROM workspace_status_changes WHERE from_status IS NOT NULL
    ) d
    GROUP BY status
"""

_STATUS_COUNTS = text(_BELIEVED)

# One statement, one snapshot: the exact count, the deltas it already includes (those
# visible now; a delta committed later stays for the next fold), and the new counts.
_RECONCILE = text(
    f"""
    WITH exact AS (
        SELECT status, count(*) AS n FROM workspaces GROUP BY status
    ), believed AS ({_BELIEVED}
    ), cleared AS (
        DELETE FROM workspace_status_changes
    ), statuses AS (
        SELECT status FROM exact UNION SELECT status FROM believed
    ), written AS (
        INSERT INTO workspace_status_counts AS c (status, n, reconciled_at)
        SELECT s.status, COALESCE(e.n, 0), now()
        FROM statuses s LEFT JOIN exact e USING (status)
        ORDER BY s.status
        ON CONFLICT (status) DO UPDATE SET n = EXCLUDED.n, reconciled_at = EXCLUDED.reconciled_at
    )
    SELECT s.status, COALESCE(e.n, 0) AS exact, COALESCE(b.n, 0) AS believed
    FROM statuses s LEFT JOIN exact e USING (status) LEFT JOIN believed b USING (status)
    """
)


# Read by the row trigger's WHEN (migration 0004): 'on' while a statement that writes
# its own deltas runs. Transaction-local: a rollback (or a savepoint's) resets it.
DELTAS_BY_STATEMENT = "registry.status_deltas_by_statement"
_DELTAS_BY_STATEMENT = text("SELECT set_config(:name, :value, true)")


def deltas_cte(source: str) -> str:
    """CTE `deltas`: the status deltas of CTE `source`'s rows, one per (from, to) pair.

    `source` returns each changed row's `previous_status` and new `status`, as locked
    and written by the statement. For statements run under `records_its_deltas`.
    """
    return f"""deltas AS (
            INSERT INTO workspace_status_changes (from_status, to_status, n)
            SELECT previous_status, status, count(*) FROM {source}
            WHERE previous_status IS DISTINCT FROM status
            GROUP BY previous_status, status
        )"""


@contextmanager
def records_its_deltas(conn: Connection) -> Iterator[None]:
    """Run the statement inside with the per-row delta trigger off (it uses `deltas_cte`).

    Only for the one statement: any other status change in the transaction is counted
    by the trigger again. If the statement fails, the transaction (or savepoint) is
    rolled back and the setting with it.
    """
    conn.execute(_DELTAS_BY_STATEMENT, {"name": DELTAS_BY_STATEMENT, "value": "on"})
    yield
    conn.execute(_DELTAS_BY_STATEMENT, {"name": DELTAS_BY_STATEMENT, "value": ""})


def fold_pending(conn: Connection, limit: int = FOLD_BATCH) -> int | None:
    """Fold up to `limit` pending deltas into the counts; None if another folder is busy.

    Holds the lock and the counts rows until the caller's transaction ends: call it in
    a short one.
    """
    if not conn.execute(_TRY_LOCK, {"key": COUNTS_LOCK_KEY}).scalar_one():
        return None
    return int(conn.execute(_FOLD, {"limit": limit}).scalar_one())


@dataclass(frozen=True)
class LiveCount:
    live: int  # workspaces `online` or `degraded`, exact as of the statement's snapshot
    pending: int  # delta rows not folded yet: what this read had to add up


def live_count(conn: Connection) -> LiveCount:
    row = conn.execute(LIVE_COUNT).one()
    return LiveCount(int(row.live), int(row.pending))


def status_counts(conn: Connection) -> dict[str, int]:
    """Workspaces per status (statuses with none may be missing or 0)."""
    return {r.status: int(r.n) for r in conn.execute(_STATUS_COUNTS)}


def reconcile(conn: Connection) -> dict[str, tuple[int, int]]:
    """Reset the counts to an exact count; returns {status: (exact, believed)} that differed.

    Costs one count of the fleet (an index-only scan of ix_workspaces_status): run it
    rarely, never on a sweep tick.
    """
    conn.execute(_LOCK, {"key": COUNTS_LOCK_KEY})
    drift = {
        r.status: (int(r.exact), int(r.believed))
        for r in conn.execute(_RECONCILE)
        if int(r.exact) != int(r.believed)
    }
    if drift:
        log.warning("status counts drifted and were reset to an exact count: %s", drift)
    return drift
