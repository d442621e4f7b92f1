"""Hibernation (CONTRACT §5): stop the container of a workspace idle for long enough.

Candidates: `hibernation_idle_minutes > 0`, status `online`/`degraded`, runtime not
`external`, and idle (`active_tasks = 0`) continuously for that many minutes. Heartbeats
keep `idle_since`: set by the first idle heartbeat, kept by further idle ones, cleared
by a busy one (registry/ingestion/heartbeats.py), so a fresh heartbeat from an idle agent does
not reset the idle time. The partial index `ix_workspaces_idle` holds exactly the rows
that can qualify.

Each workspace goes through three short transactions, so no row lock is ever held
across a Docker call:

1. claim: `→ hibernating`, a conditional UPDATE that re-tests idleness under the row
   lock (SKIP LOCKED: a heartbeat in flight holds the lock, and a busy agent must win).
   No event: `hibernating` is the sweep's own short-lived marker;
2. stop the container through the `ContainerStopper` (no transaction open);
3. finish: `→ hibernated`, clear `url`, `idle_since` and the Redis keys, record
   `WORKSPACE_HIBERNATED {name, tier}`; or, when the stop failed, release: put the
   previous status back (no event: nothing was announced) so the next tick retries.

A worker that dies between 1 and 3 leaves the row in `hibernating`, a status the
liveness paths never touch. Each sweep therefore also retries rows `hibernating` for
longer than `stuck_after_seconds` (default 10 min, far above one sweep's deadline plus
one stop): it re-arms their `status_changed_at` as a lease (so two sweeps never retry
the same row), stops the container again (stopping twice is harmless), and finishes
as above. If that stop fails the row is released to `online` — its previous status
died with the worker; the next heartbeat re-applies `degraded` if still due, and the
liveness paths take over if the agent is gone.

Without a container backend (`CONTAINER_BACKEND=none`) nothing can be stopped, so the
sweep does nothing and says so once per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, text

from registry import metrics
from registry.config import Settings
from registry.liveness.keys import clear_workspace_keys
from registry.statuses import EXTERNAL_RUNTIME, EventType, Status
from registry.sweeps.containers import ContainerError, ContainerStopper
from registry.uow import UnitOfWork, record_event_on_commit, unit_of_work

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
DEFAULT_DEADLINE_SECONDS = 60.0  # half the default interval: one sweep never overlaps two


def deadline_for(settings: Settings) -> float:
    """Half of HIBERNATION_SWEEP_INTERVAL, so one sweep never overlaps the next."""
    return settings.hibernation_sweep_interval / 2


DEFAULT_STUCK_AFTER_SECONDS = 600

# Idle for long enough, by the database's clock. Written over alias `w`; the first
# three terms are the predicate of ix_workspaces_idle, so the planner uses it.
_IDLE_INDEXED = "w.hibernation_idle_minutes > 0"
_IDLE_REST = f"""
    AND w.idle_since IS NOT NULL
    AND w.status IN ('online', 'degraded')
    AND w.idle_since <= now() - make_interval(mins => w.hibernation_idle_minutes)
    AND w.active_tasks = 0
    AND w.runtime <> '{EXTERNAL_RUNTIME}'
"""
_IDLE = _IDLE_INDEXED + _IDLE_REST

FIND_CANDIDATES = text(
    f"SELECT w.id FROM workspaces w WHERE {_IDLE} ORDER BY w.idle_since LIMIT :limit"
)

# Re-tests the whole condition on the locked row: a heartbeat that made the agent busy
# after the candidates were read (idle_since NULL, active_tasks > 0) wins, and one that
# holds the lock right now makes the sweep pass over the row until the next tick.
# The same test, but written so that it does NOT imply ix_workspaces_idle's predicate
# (COALESCE): a claim is one primary-key lookup. Through the idle index each claim
# would read every idle row, and a tick of n claims would cost n x idle rows.
CLAIM = text(
    f"""
    WITH cand AS (
        SELECT w.id, w.status FROM workspaces w
        WHERE w.id = :id AND COALESCE(w.hibernation_idle_minutes, 0) > 0 {_IDLE_REST}
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE workspaces w SET status = 'hibernating', updated_at = now()
    FROM cand WHERE w.id = cand.id
    RETURNING w.id, cand.status AS previous_status
    """
)

_FINISH = text(
    """
    UPDATE workspaces
    SET status = 'hibernated', url = NULL, idle_since = NULL, updated_at = now()
    WHERE id = :id AND status = 'hibernating'
    RETURNING name, tier
    """
)

_RELEASE = text(
    """
    UPDATE workspaces SET status = :previous, updated_at = now()
    WHERE id = :id AND status = 'hibernating'
    RETURNING id
    """
)

FIND_STUCK = text(
    """
    SELECT id FROM workspaces
    WHERE status = 'hibernating'
      AND status_changed_at < now() - make_interval(secs => :stuck_after)
    ORDER BY status_changed_at
    LIMIT :limit
    """
)

# The status trigger fires only when `status` changes, so writing status_changed_at
# directly re-arms the timer: a lease that keeps a second sweep off this row.
_RECLAIM_STUCK = text(
    """
    WITH cand AS (
        SELECT id FROM workspaces
        WHERE id = :id AND status = 'hibernating'
          AND status_changed_at < now() - make_interval(secs => :stuck_after)
        FOR UPDATE SKIP LOCKED
    )
    UPDATE workspaces w SET status_changed_at = now()
    FROM cand WHERE w.id = cand.id
    RETURNING w.id
    """
)

_disabled_logged: list[bool] = []


@dataclass(frozen=True)
class Claimed:
    workspace_id: UUID
    previous_status: str  # where a failed stop puts the row back


def find_candidates(conn: Connection, limit: int = DEFAULT_LIMIT) -> list[UUID]:
    """Workspaces idle for long enough, longest idle first (no lock taken)."""
    return list(conn.execute(FIND_CANDIDATES, {"limit": limit}).scalars())


def claim(uow: UnitOfWork, workspace_id: UUID) -> Claimed | None:
    """`→ hibernating` if still idle and not locked; None when the row is not claimed."""
    row = uow.conn.execute(CLAIM, {"id": workspace_id}).first()
    if row is None:
        return None
    previous = row.previous_status
    uow.after_commit(lambda: metrics.record_transition(previous, Status.HIBERNATING))
    return Claimed(row.id, row.previous_status)


def finish(uow: UnitOfWork, workspace_id: UUID) -> bool:
    """`hibernating → hibernated`, url and Redis keys cleared, event recorded."""
    row = uow.conn.execute(_FINISH, {"id": workspace_id}).first()
    if row is None:  # removed (or re-registered) while its container was stopping
        return False
    record_event_on_commit(
        uow, EventType.WORKSPACE_HIBERNATED, workspace_id, {"name": row.name, "tier": row.tier}
    )
    uow.on_commit(lambda pipe: clear_workspace_keys(pipe, workspace_id))
    uow.after_commit(lambda: metrics.record_transition(Status.HIBERNATING, Status.HIBERNATED))
    return True


def release(uow: UnitOfWork, claimed: Claimed) -> bool:
    """Put the status the claim replaced back (the stop failed; retried next tick)."""
    row = uow.conn.execute(
        _RELEASE, {"id": claimed.workspace_id, "previous": claimed.previous_status}
    ).first()
    if row is not None:
        previous = claimed.previous_status
        uow.after_commit(lambda: metrics.record_transition(Status.HIBERNATING, previous))
    return row is not None


def find_stuck(
    conn: Connection, stuck_after_seconds: int, limit: int = DEFAULT_LIMIT
) -> list[UUID]:
    return list(
        conn.execute(FIND_STUCK, {"stuck_after": stuck_after_seconds, "limit": limit}).scalars()
    )


def reclaim_stuck(uow: UnitOfWork, workspace_id: UUID, stuck_after_seconds: int) -> Claimed | None:
    row = uow.conn.execute(
        _RECLAIM_STUCK, {"id": workspace_id, "stuck_after": stuck_after_seconds}
    ).first()
    # The status before the lost claim is unknown; `online` is the safe way back.
    return Claimed(row.id, str(Status.ONLINE)) if row is not None else None


@dataclass
class _Tally:
    hibernated: int = 0
    stop_failed: int = 0
    recovered: int = 0
    deadline_exceeded: bool = False

    def result(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "changed": self.hibernated,
            "stop_failed": self.stop_failed,
            "recovered_stuck": self.recovered,
            "deadline_exceeded": self.deadline_exceeded,
        }


def _stop_then_settle(
    stopper: ContainerStopper, claimed: Claimed, engine: Engine | None, tally: _Tally
) -> bool:
    """Step 2 and 3 for a claimed row; True when it ended `hibernated`."""
    ws = claimed.workspace_id
    try:
        stopper.stop(ws)
    except Exception as exc:  # whatever went wrong, the row must not stay hibernating
        if not isinstance(exc, ContainerError):
            log.exception("hibernation of workspace %s: unexpected error stopping it", ws)
        tally.stop_failed += 1
        with unit_of_work(engine) as uow:
            released = release(uow, claimed)
        log.warning(
            "hibernation of workspace %s: container stop failed (%s); %s, retried next sweep",
            ws,
            exc,
            f"back to {claimed.previous_status}" if released else "row changed meanwhile",
        )
        return False
    with unit_of_work(engine) as uow:
        done = finish(uow, ws)
    if done:
        tally.hibernated += 1
        log.info("workspace %s hibernated (container stopped)", ws)
    else:
        log.info("workspace %s: container stopped, but the row left hibernating meanwhile", ws)
    return done


def sweep_hibernation(
    stopper: ContainerStopper | None,
    *,
    engine: Engine | None = None,
    limit: int = DEFAULT_LIMIT,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    stuck_after_seconds: int = DEFAULT_STUCK_AFTER_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """One hibernation pass: stuck rows first, then idle candidates, until the deadline."""
    if stopper is None:
        if not _disabled_logged:
            _disabled_logged.append(True)
            log.warning(
                "hibernation sweep disabled: no container backend (CONTAINER_BACKEND=none), "
                "so idle workspaces cannot be stopped"
            )
        return {"status": "ok", "changed": 0, "disabled": "no container backend"}

    started = clock()
    tally = _Tally()

    def out_of_time() -> bool:
        if clock() - started >= deadline_seconds:
            if not tally.deadline_exceeded:
                log.warning(
                    "hibernation sweep stopped at its %.0f s deadline; the next one continues",
                    deadline_seconds,
                )
            tally.deadline_exceeded = True
        return tally.deadline_exceeded

    with unit_of_work(engine) as uow:
        stuck = find_stuck(uow.conn, stuck_after_seconds, limit)
    for ws in stuck:
        if out_of_time():
            return tally.result()
        with unit_of_work(engine) as uow:
            claimed = reclaim_stuck(uow, ws, stuck_after_seconds)
        if claimed is not None:
            log.warning("workspace %s stuck in hibernating; retrying its container stop", ws)
            if _stop_then_settle(stopper, claimed, engine, tally):
                tally.recovered += 1

    with unit_of_work(engine) as uow:
        candidates = find_candidates(uow.conn, limit)
    for ws in candidates:
        if out_of_time():
            break
        with unit_of_work(engine) as uow:
            claimed = claim(uow, ws)
        if claimed is not None:  # else busy again, locked, or taken by another sweep
            _stop_then_settle(stopper, claimed, engine, tally)
    return tally.result()
