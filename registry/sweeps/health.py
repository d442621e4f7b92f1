"""Health sweep (CONTRACT §5): containers that are gone, and remote agents that went quiet.

Two passes; an error in one never stops the other.

- **Containers** (only when a ContainerChecker is configured): every `online`/`degraded`
  workspace whose runtime is neither `external` nor `mock` is asked "is its container
  running?". Not running → `offline`, reason `container_gone`, keys cleared, unless
  `removed` or `provisioning`. A checker
  error skips that workspace: no answer is never read as "gone". This is an explicit
  signal: self-preservation does not pause it. The UPDATE re-checks that the row is
  still live and in the same status spell (`status_changed_at`) as when it was asked,
  so a workspace hibernated or restarted meanwhile is left alone.
- **Remote agents**: `external` workspaces in `online`/`degraded` whose
  `COALESCE(last_heartbeat_at, updated_at)` is older than REMOTE_LIVENESS_STALE_AFTER
  (plus the heartbeat queue's measured lag) → `awaiting_agent`, reason
  `heartbeat_stale`, keys cleared, unless `removed`, `provisioning` or `paused`. An
  automatic path: it pauses while self-preservation is active.

Bounded (docs/SECURITY.md "Bounded work"): one health sweep runs at a time in the
whole cluster (an advisory lock; a second one started meanwhile reports `skipped`),
and the container pass stops at a deadline below the sweep interval. So that a fleet
too big for one deadline is still covered, each sweep's container pass starts at a
random point of the id space and wraps around.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text

from registry.config import Settings
from registry.db import get_engine
from registry.liveness.selfpreservation import HEARTBEAT_STALE, evaluate_recent
from registry.liveness.transitions import Unreachable, mark_unreachable
from registry.statuses import CONTAINERLESS_RUNTIMES, EXTERNAL_RUNTIME, Status
from registry.sweeps.clusterlock import cluster_lock
from registry.sweeps.containers import ContainerChecker, ContainerError
from registry.uow import UnitOfWork, unit_of_work

log = logging.getLogger(__name__)

CONTAINER_GONE = "container_gone"
CONTAINER_EXCLUDED = frozenset({Status.REMOVED, Status.PROVISIONING})
REMOTE_EXCLUDED = frozenset({Status.REMOVED, Status.PROVISIONING, Status.PAUSED})

BATCH_SIZE = 200
# Engine calls are I/O-bound (one inspect each); a few threads keep a 15 s interval
# for fleets of thousands without hammering the engine.
CHECK_THREADS = 8

_announced_disabled = False

# pg_try_advisory_lock key for "a health sweep is running" (ASCII "molhealt").
HEALTH_LOCK_KEY = 0x6D6F6C6865616C74
# The container pass stops at this share of the sweep interval (beat's `expires` is 0.9).
DEADLINE_SHARE = 0.8
MAX_UUID = UUID(int=(1 << 128) - 1)
_NOT_ASKED = object()  # a candidate the deadline left for the next sweep


@dataclass(frozen=True)
class Candidate:
    workspace_id: UUID
    status_changed_at: datetime


@dataclass
class ContainerPass:
    checked: int = 0
    gone: int = 0
    errors: int = 0
    changed: list[Unreachable] = field(default_factory=list)
    deadline_exceeded: bool = False

    def as_dict(self) -> dict[str, int]:
        report = {
            "checked": self.checked,
            "gone": self.gone,
            "errors": self.errors,
            "changed": len(self.changed),
        }
        if self.deadline_exceeded:  # only then: the usual report stays as it was
            report["deadline_exceeded"] = 1
        return report


_CONTAINERLESS = ", ".join(f"'{runtime}'" for runtime in CONTAINERLESS_RUNTIMES)
CONTAINER_CANDIDATES = text(
    f"""
    SELECT id, status_changed_at FROM workspaces
    -- No container to ask about for external and mock runtimes (CONTRACT §12).
    WHERE status IN ('online', 'degraded') AND runtime NOT IN ({_CONTAINERLESS})
      AND id > :after AND id <= :until
    ORDER BY id
    LIMIT :limit
    """
)

# Still live, and still in the status spell the checker was asked about.
GONE_SQL = (
    "w.status IN ('online', 'degraded') AND (w.id, w.status_changed_at) IN ("
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:seen AS timestamptz[])))"
)


def _candidate_batches(batch_size: int, start: UUID | None = None) -> Iterator[list[Candidate]]:
    """Keyset pages by id from `start` to the end, then from the beginning up to `start`;
    each read in its own short transaction (the checker is slow)."""
    start = start or UUID(int=0)
    # (The nil UUID itself is never a workspace id.)
    legs = [(start, MAX_UUID)] + ([(UUID(int=0), start)] if start.int else [])
    for leg_start, until in legs:
        after = leg_start
        while True:
            with get_engine().connect() as conn:
                rows = conn.execute(
                    CONTAINER_CANDIDATES, {"after": after, "until": until, "limit": batch_size}
                ).all()
            if not rows:
                break
            yield [Candidate(r.id, r.status_changed_at) for r in rows]
            if len(rows) < batch_size:
                break
            after = rows[-1].id


def _is_running(checker: ContainerChecker, candidate: Candidate) -> bool | None:
    """True/False from the checker; None when it could not tell (skip, never guess)."""
    try:
        return checker.is_running(candidate.workspace_id)
    except ContainerError as exc:
        log.warning("health: cannot check workspace %s: %s", candidate.workspace_id, exc)
    except Exception:
        log.exception("health: checker failed on workspace %s", candidate.workspace_id)
    return None


def sweep_containers(
    checker: ContainerChecker,
    *,
    batch_size: int = BATCH_SIZE,
    deadline: Callable[[], bool] | None = None,
    start: UUID | None = None,
) -> ContainerPass:
    """Ask the checker about every live container-backed workspace; mark the gone ones.

    Once `deadline()` turns true no further workspace is asked and the pass ends
    (`deadline_exceeded`); the next sweep starts elsewhere in the id space.
    """
    result = ContainerPass()

    def ask(candidate: Candidate) -> bool | object | None:
        # Past the deadline nobody more is asked (an answer in flight is awaited: the
        # engine client's own timeout bounds it).
        if deadline is not None and deadline():
            return _NOT_ASKED
        return _is_running(checker, candidate)

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for batch in _candidate_batches(batch_size, start):
            answered = [
                (c, running)
                for c, running in zip(batch, pool.map(ask, batch), strict=True)
                if running is not _NOT_ASKED
            ]
            gone = [c for c, running in answered if running is False]
            result.checked += len(answered)
            result.errors += sum(1 for _, running in answered if running is None)
            result.gone += len(gone)
            if gone:
                with unit_of_work() as uow:
                    result.changed += mark_gone(uow, gone)
            if len(answered) < len(batch):
                result.deadline_exceeded = True
                log.warning("health: container pass stopped at its deadline; the next one goes on")
                break
    for change in result.changed:
        log.warning(
            "health: workspace %s %s -> offline (container not running)",
            change.workspace_id,
            change.previous_status,
        )
    return result


def mark_gone(uow: UnitOfWork, gone: list[Candidate]) -> list[Unreachable]:
    return mark_unreachable(
        uow,
        reason=CONTAINER_GONE,
        candidates_sql=GONE_SQL,
        params={
            "ids": [c.workspace_id for c in gone],
            "seen": [c.status_changed_at for c in gone],
        },
        excluded=CONTAINER_EXCLUDED,
        target=Status.OFFLINE,
        limit=len(gone),
    )


_EXTERNAL_LIVE = f"w.runtime = '{EXTERNAL_RUNTIME}' AND w.status IN ('online', 'degraded')"
# COALESCE(last_heartbeat_at, updated_at) older than :stale_after, as two statements:
# each is one range on ix_workspaces_live_heartbeat (last_heartbeat_at, runtime; it
# indexes NULLs too) with the runtime tested inside the index, so the pass costs in
# proportion to the stale external rows, not to every stale row. Written as one OR, the
# planner reads the whole live index instead.
REMOTE_STALE_SQL: tuple[tuple[str, str | None], ...] = (
    (
        f"{_EXTERNAL_LIVE} AND w.last_heartbeat_at < now() - make_interval(secs => :stale_after)",
        "w.last_heartbeat_at",
    ),
    (
        f"{_EXTERNAL_LIVE} AND w.last_heartbeat_at IS NULL "
        "AND w.updated_at < now() - make_interval(secs => :stale_after)",
        None,
    ),
)


def mark_remote_stale(
    uow: UnitOfWork, *, stale_after: float, limit: int = BATCH_SIZE
) -> list[Unreachable]:
    changed: list[Unreachable] = []
    for candidates_sql, order_sql in REMOTE_STALE_SQL:
        if len(changed) >= limit:
            break
        changed += mark_unreachable(
            uow,
            reason=HEARTBEAT_STALE,
            candidates_sql=candidates_sql,
            params={"stale_after": stale_after},
            excluded=REMOTE_EXCLUDED,
            target=Status.AWAITING_AGENT,
            limit=limit - len(changed),
            order_sql=order_sql,
        )
    return changed


def sweep_remote_agents(settings: Settings, *, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    assessment = evaluate_recent(settings)
    if assessment.paused:
        log.warning("health: remote-agent pass paused by self-preservation (%s)", assessment.reason)
        return {"changed": 0, "paused": "self_preservation", "reason": assessment.reason}
    stale_after = settings.remote_liveness_stale_after + assessment.backlog_seconds
    with unit_of_work() as uow:
        changed = mark_remote_stale(uow, stale_after=stale_after, limit=batch_size)
    if changed:
        log.warning(
            "health: %d external workspace(s) -> awaiting_agent (no heartbeat for %.0f s)",
            len(changed),
            stale_after,
        )
    for change in changed:  # one line per batch above; each row at INFO
        log.info(
            "health: external workspace %s %s -> awaiting_agent",
            change.workspace_id,
            change.previous_status,
        )
    return {"changed": len(changed), "more": len(changed) == batch_size}


def sweep_health(
    settings: Settings,
    checker: ContainerChecker | None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Both passes, one sweep at a time cluster-wide; `checker` None skips the container pass."""
    with cluster_lock(HEALTH_LOCK_KEY) as held:
        if not held:
            log.info("health sweep skipped: another one is running")
            return {"status": "ok", "changed": 0, "skipped": "another health sweep is running"}
        started = clock()
        budget = settings.health_sweep_interval * DEADLINE_SHARE
        return _sweep_health(settings, checker, lambda: clock() - started >= budget)


def _sweep_health(
    settings: Settings, checker: ContainerChecker | None, deadline: Callable[[], bool]
) -> dict[str, Any]:
    global _announced_disabled  # noqa: PLW0603 - a once-per-process log flag
    containers: dict[str, Any] | str
    if checker is None:
        containers = "disabled"
        if not _announced_disabled:
            _announced_disabled = True
            log.info("health: no container backend (CONTAINER_BACKEND=none); container pass off")
    else:
        try:
            containers = sweep_containers(
                checker, deadline=deadline, start=uuid.UUID(int=uuid.uuid4().int)
            ).as_dict()
        except Exception:
            log.exception("health: container pass failed; the remote-agent pass still runs")
            containers = "error"
    try:
        remote = sweep_remote_agents(settings)
    except Exception:
        log.exception("health: remote-agent pass failed")
        remote = {"changed": 0, "error": True}
    changed = (containers["changed"] if isinstance(containers, dict) else 0) + remote["changed"]
    return {"status": "ok", "changed": changed, "containers": containers, "remote": remote}
