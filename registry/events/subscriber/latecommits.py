"""Late commits: which ids a subscriber skipped may still arrive, and which never will.

Event ids come from a sequence at insert time, but transactions commit in any order:
id 11 can be visible while id 10's transaction is still open. A subscriber that has
handed out 11 remembers 10 as pending (see `Position.pending`); a replay reads pending
ids too, so an event committed late behind a gap is never skipped.

A pending id is forgotten once delivered, or once no transaction can still commit it.
A snapshot's `xmax` is the first transaction id not yet assigned; it is noted a grace
period after the id was first missed (a sequence value is drawn a moment before the
inserting transaction gets its transaction id), so the transaction holding the id
has a lower one. Later, when no transaction of this database with an id below that
`xmax` is still running (each holds the lock on its own transaction id; one of
another database cannot insert here), and then, in a newer snapshot, the row is still
not visible, its transaction rolled back. Only this database's transactions are
considered, so a long transaction elsewhere on the cluster does not hold ids here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from sqlalchemy import Connection, text

GRACE_SECONDS = 1.0
CHECK_EVERY_SECONDS = 1.0

# First statement: who is running now (in this database, or prepared for two-phase
# commit, whose database is unknown) and the next id to be assigned.
_RUNNING = text(
    """
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS xmax,
           ARRAY(
               SELECT l.transactionid::text
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                 AND (a.datname = current_database() OR l.pid IS NULL)
           ) AS running
    """
)
# Second statement, so a newer snapshot: a transaction not running above has ended
# before it was taken, and its rows are visible here if it committed.
_PRESENT = text("SELECT id FROM structure_events WHERE id = ANY(:ids)")

XID_SPACE = 2**32


def precedes(xid: int, horizon: int) -> bool:
    """Whether the 32-bit `xid` was assigned before the 64-bit `horizon` (wraparound-aware)."""
    distance = (horizon - xid) % XID_SPACE
    return 0 < distance < XID_SPACE // 2


class LateCommits:
    """Decides when pending ids can be forgotten (one per subscriber)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._noticed: dict[int, float] = {}
        self._horizon: dict[int, int] = {}
        self._last_check = float("-inf")

    def due(self, pending: Collection[int]) -> bool:
        return bool(pending) and self._clock() - self._last_check >= CHECK_EVERY_SECONDS

    def settle(self, conn: Connection, pending: Collection[int]) -> set[int]:
        """The pending ids no transaction can commit any more (to forget)."""
        now = self._clock()
        self._last_check = now
        row = conn.execute(_RUNNING).one()
        xmax, running = int(row.xmax), [int(x) for x in row.running]
        present = set(conn.execute(_PRESENT, {"ids": list(pending)}).scalars())
        final: set[int] = set()
        for event_id in pending:
            noticed = self._noticed.setdefault(event_id, now)
            if event_id in present:
                continue  # committed: the stream (or a replay) delivers it
            horizon = self._horizon.get(event_id)
            if horizon is None:
                if now - noticed >= GRACE_SECONDS:
                    self._horizon[event_id] = xmax
            elif not any(precedes(xid, horizon) for xid in running):
                final.add(event_id)
        keep = set(pending) - final
        self._noticed = {k: v for k, v in self._noticed.items() if k in keep}
        self._horizon = {k: v for k, v in self._horizon.items() if k in keep}
        return final
