"""Workspaces per status kept by triggers (the self-preservation fleet size, CONTRACT §5).

The counts must equal an exact `count(*) GROUP BY status` after anything: concurrent
transitions from several processes (row by row and set-based marking, which writes its
own deltas) (with folds and reconciliations running among
them), rolled-back transactions, a process killed in the middle of a transaction, a
TRUNCATE, and counts damaged by hand (a reconciliation repairs them and says so).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from liveness_helpers import add_fleet, fresh_liveness_state
from sqlalchemy import Engine, text
from workerproc import managed_process, process_env

from registry.config import get_settings
from registry.liveness.selfpreservation import assess
from registry.liveness.selfpreservation.counts import (
    FOLD_AFTER,
    fold_pending,
    live_count,
    reconcile,
    status_counts,
)
from registry.liveness.selfpreservation.state import evaluate_now
from registry.liveness.transitions import mark_unreachable
from registry.sweeps.provisioning import sweep_provisioning
from registry.uow import UnitOfWork

pytestmark = pytest.mark.integration

CHURN = str(Path(__file__).resolve().parent / "status_churn.py")


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


def exact(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) AS n FROM workspaces GROUP BY status"))
        return {r.status: int(r.n) for r in rows}


def kept(engine: Engine) -> dict[str, int]:
    """What the counts say, statuses with none left out (as in `exact`)."""
    with engine.connect() as conn:
        return {s: n for s, n in status_counts(conn).items() if n != 0}


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM workspace_status_changes")).scalar())


def mix(engine: Engine) -> None:
    """A fleet in several statuses, as inserts and updates write it."""
    add_fleet(engine, 30)
    add_fleet(engine, 7, status="degraded")
    add_fleet(engine, 5, status="provisioning", heartbeat_age=None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET status = 'offline' "
                "WHERE id IN (SELECT id FROM workspaces WHERE status = 'online' LIMIT 4)"
            )
        )


def test_counts_follow_inserts_updates_deletes_and_truncate(liveness_db):
    mix(liveness_db)
    assert (
        kept(liveness_db)
        == exact(liveness_db)
        == {
            "online": 26,
            "degraded": 7,
            "provisioning": 5,
            "offline": 4,
        }
    )
    with liveness_db.begin() as conn:
        conn.execute(text("DELETE FROM workspaces WHERE status = 'provisioning'"))
    assert kept(liveness_db) == exact(liveness_db)
    with liveness_db.begin() as conn:
        assert fold_pending(conn) > 0
    assert pending(liveness_db) == 0
    assert kept(liveness_db) == exact(liveness_db)
    with liveness_db.begin() as conn:
        conn.execute(text("TRUNCATE workspaces CASCADE"))
    assert kept(liveness_db) == exact(liveness_db) == {}


def test_a_heartbeat_that_changes_no_status_writes_no_delta(liveness_db):
    fleet = add_fleet(liveness_db, 5)
    before = pending(liveness_db)
    with liveness_db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now(), status = status WHERE id = ANY(:ids)"
            ),
            {"ids": fleet},
        )
    assert pending(liveness_db) == before


def test_bulk_marking_writes_one_delta_per_move_and_the_trigger_counts_the_rest(liveness_db):
    fleet = add_fleet(liveness_db, 12)
    add_fleet(liveness_db, 3, runtime="external")  # lands in awaiting_agent
    before = pending(liveness_db)
    with liveness_db.begin() as conn:
        marked = mark_unreachable(
            UnitOfWork(conn),
            reason="liveness_expired",
            candidates_sql="w.status = 'online' AND w.id <> ALL(:keep)",
            params={"keep": fleet[:2]},
        )
        # Later in the same transaction, a row-by-row change: counted by the trigger.
        conn.execute(
            text("UPDATE workspaces SET status = 'paused' WHERE id = ANY(:ids)"),
            {"ids": fleet[:2]},
        )
    assert len(marked) == 13
    # online -> offline and online -> awaiting_agent: one delta each, then the pause's two.
    assert pending(liveness_db) == before + 4
    assert (
        kept(liveness_db) == exact(liveness_db) == {"offline": 10, "awaiting_agent": 3, "paused": 2}
    )
    with liveness_db.begin() as conn:
        assert reconcile(conn) == {}


def test_the_provisioning_sweep_writes_its_own_deltas(liveness_db):
    stuck = add_fleet(liveness_db, 6, status="provisioning", heartbeat_age=None)
    with liveness_db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET status_changed_at = now() - interval '1 hour', "
                "updated_at = now() - interval '1 hour' WHERE id = ANY(:ids)"
            ),
            {"ids": stuck},
        )
    before = pending(liveness_db)
    with liveness_db.begin() as conn:
        assert sweep_provisioning(UnitOfWork(conn))["changed"] == 6
    assert pending(liveness_db) == before + 1
    assert kept(liveness_db) == exact(liveness_db) == {"failed": 6}


def test_a_rolled_back_transaction_leaves_the_counts_right(liveness_db):
    mix(liveness_db)
    before = kept(liveness_db)
    with liveness_db.connect() as conn:
        trans = conn.begin()
        conn.execute(text("UPDATE workspaces SET status = 'removed'"))
        conn.execute(
            text("DELETE FROM workspaces WHERE status = 'removed' AND name LIKE 'fleet-1%'")
        )
        fold_pending(conn)
        assert live_count(conn).live == 0  # the transaction sees its own changes
        trans.rollback()
    assert kept(liveness_db) == before == exact(liveness_db)


def test_a_process_killed_mid_transaction_leaves_the_counts_right(liveness_db, test_env, tmp_path):
    mix(liveness_db)
    before = kept(liveness_db)
    with managed_process(
        [sys.executable, CHURN, "hold"],
        env=process_env(test_env),
        log_dir=tmp_path,
        ready="holding",
        name="holder",
    ) as holder:
        holder.kill()  # SIGKILL: status changes and a fold, never committed
    # Writers queue behind the dead transaction's row locks until PostgreSQL aborts it.
    with liveness_db.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '20s'"))
        conn.execute(text("UPDATE workspaces SET status = 'online' WHERE status = 'degraded'"))
    with liveness_db.begin() as conn:
        fold_pending(conn)
    after = kept(liveness_db)
    assert after == exact(liveness_db)
    degraded = before.pop("degraded")
    assert after == {**before, "online": before["online"] + degraded}


def test_counts_stay_exact_under_concurrent_writers_from_several_processes(liveness_db, test_env):
    add_fleet(liveness_db, 300)
    env = process_env(test_env)
    procs = [
        subprocess.Popen(
            [sys.executable, CHURN, "churn", "120", str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.startswith("done ")
    committed = sum(int(out.split()[1]) for out, _ in outputs)
    assert committed > 200  # the churn really changed statuses
    truth = exact(liveness_db)
    assert set(truth) - {"online"}, "statuses really moved"
    assert kept(liveness_db) == truth
    # The fleet size self-preservation uses is the exact live count.
    with liveness_db.connect() as conn:
        figures = assess(conn, get_settings()).figures
    assert figures["live"] == truth.get("online", 0) + truth.get("degraded", 0)


def test_reconcile_repairs_damaged_counts_and_reports_the_drift(liveness_db, caplog):
    mix(liveness_db)
    truth = exact(liveness_db)
    with liveness_db.begin() as conn:  # what no trigger sees: a hand edit
        conn.execute(text("UPDATE workspace_status_counts SET n = n + 7 WHERE status = 'online'"))
        conn.execute(text("INSERT INTO workspace_status_changes (from_status) VALUES ('paused')"))
    assert kept(liveness_db) != truth
    with caplog.at_level(logging.WARNING), liveness_db.begin() as conn:
        drift = reconcile(conn)
    assert drift == {
        "online": (truth["online"], truth["online"] + 7),
        "paused": (0, -1),
    }
    assert "drifted" in caplog.text
    assert pending(liveness_db) == 0
    assert kept(liveness_db) == truth
    with liveness_db.begin() as conn:
        assert reconcile(conn) == {}  # nothing to repair twice


def test_evaluation_folds_only_when_many_deltas_wait(liveness_db):
    add_fleet(liveness_db, 25)
    assert 0 < pending(liveness_db) < FOLD_AFTER
    evaluate_now(get_settings())
    assert pending(liveness_db) > 0  # few: read, not folded
    with liveness_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspace_status_changes (from_status, to_status) "
                "SELECT 'online', 'degraded' FROM generate_series(1, :n)"
            ),
            {"n": FOLD_AFTER},
        )
        conn.execute(
            text(
                "INSERT INTO workspace_status_changes (from_status, to_status) "
                "SELECT 'degraded', 'online' FROM generate_series(1, :n)"
            ),
            {"n": FOLD_AFTER},
        )
    evaluate_now(get_settings())
    assert pending(liveness_db) == 0
    assert kept(liveness_db) == exact(liveness_db)


def test_the_reconcile_task_on_the_sweeps_queue(liveness_db, worker, celery_app) -> None:
    with liveness_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status) "
                "SELECT gen_random_uuid(), 'r', 'online' FROM generate_series(1, 6)"
            )
        )
        # Two departures no trigger wrote (a hand edit): the counts say 4.
        conn.execute(
            text("INSERT INTO workspace_status_changes (from_status) VALUES ('online'), ('online')")
        )
    result = celery_app.send_task("registry.reconcile_status_counts", queue="registry.sweeps").get(
        timeout=20
    )
    assert result == {"status": "ok", "changed": 1, "drift": {"online": 2}}
