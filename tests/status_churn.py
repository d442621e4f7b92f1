"""A separate process that changes workspace statuses (tests/test_status_counts.py).

`python tests/status_churn.py churn <rounds> <seed>`: `rounds` transactions, each moving
a few random workspaces to random statuses (one in five rolled back on purpose), some
also marking a few unreachable the set-based way (`mark_unreachable`, which writes its
own deltas) before further moves, with a fold or a reconciliation of the status counts
now and then; deadlocks with the other
churners are rolled back and counted. Prints `done <committed> <rolled back>`.

`python tests/status_churn.py hold`: changes statuses (row by row and set-based) and
folds the deltas in one transaction, prints `holding`, and waits to be killed before committing.

The database comes from DATABASE_URL, as for every registry process.
"""

from __future__ import annotations

import random
import sys
import time

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from registry.db import get_engine
from registry.liveness.selfpreservation.counts import fold_pending, reconcile
from registry.liveness.transitions import mark_unreachable
from registry.statuses import ALL_STATUSES
from registry.uow import UnitOfWork

_MOVE = text(
    """
    UPDATE workspaces SET status = :status
    WHERE id IN (SELECT id FROM workspaces ORDER BY random() LIMIT :n)
    """
)

_SOME = text("SELECT id FROM workspaces ORDER BY random() LIMIT :n")


def mark_some(conn, n: int) -> None:
    """The bulk path: a few random workspaces marked unreachable in one statement."""
    ids = list(conn.execute(_SOME, {"n": n}).scalars())
    mark_unreachable(
        UnitOfWork(conn), reason="churn", candidates_sql="w.id = ANY(:ids)", params={"ids": ids}
    )


def churn(rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    engine = get_engine()
    committed = rolled_back = 0
    for i in range(rounds):
        conn = engine.connect()
        trans = conn.begin()
        try:
            for _ in range(rng.randint(1, 3)):
                conn.execute(_MOVE, {"status": rng.choice(ALL_STATUSES), "n": rng.randint(1, 5)})
                if rng.random() < 0.3:  # the row-by-row moves after it are counted again
                    mark_some(conn, rng.randint(1, 8))
            if i % 7 == 0:
                fold_pending(conn, limit=rng.randint(1, 50))
            if i % 29 == 0:
                reconcile(conn)
            if rng.random() < 0.2:
                trans.rollback()
                rolled_back += 1
            else:
                trans.commit()
                committed += 1
        except OperationalError:  # a deadlock with another churner: rolled back whole
            trans.rollback()
            rolled_back += 1
        finally:
            conn.close()
    print(f"done {committed} {rolled_back}", flush=True)


def hold() -> None:
    with get_engine().connect() as conn:
        conn.begin()
        conn.execute(_MOVE, {"status": "offline", "n": 40})
        mark_some(conn, 20)
        fold_pending(conn)
        print("holding", flush=True)
        time.sleep(600)


if __name__ == "__main__":
    if sys.argv[1] == "churn":
        churn(int(sys.argv[2]), int(sys.argv[3]))
    else:
        hold()
