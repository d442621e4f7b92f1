"""The shared on/off state of self-preservation and its events (CONTRACT §5).

The state lives in PostgreSQL (`registry_self_preservation`, one row) so every worker,
beat and listener agree. Start and end are conditional UPDATEs: several evaluators
record one `REGISTRY_SELF_PRESERVATION {active: true, reason, figures}` event when it
starts and one `{active: false}` when it ends. Explicit signals (container gone,
provisioning timeout, removal) never ask and are never paused.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, text

from registry import metrics
from registry.config import Settings
from registry.jsontext import dumps
from registry.liveness.selfpreservation.counts import FOLD_AFTER, fold_pending
from registry.liveness.selfpreservation.measuring import Assessment, assess
from registry.liveness.selfpreservation.probes import measure_backlog
from registry.liveness.selfpreservation.reuse import remember, reused_assessment
from registry.statuses import EventType
from registry.uow import UnitOfWork, record_event_on_commit, unit_of_work

log = logging.getLogger(__name__)

_START = text(
    """
    UPDATE registry_self_preservation
    SET active = true, reason = :reason, figures = CAST(:figures AS jsonb),
        since = now(), updated_at = now()
    WHERE id = 1 AND NOT active
    RETURNING since
    """
)
_REFRESH = text(
    """
    UPDATE registry_self_preservation
    SET reason = :reason, figures = CAST(:figures AS jsonb), updated_at = now()
    WHERE id = 1 AND active
    """
)
_END = text(
    """
    UPDATE registry_self_preservation
    SET active = false, updated_at = now()
    WHERE id = 1 AND active
    RETURNING reason, EXTRACT(EPOCH FROM now() - since) AS duration
    """
)

_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")


def evaluate(uow: UnitOfWork, settings: Settings) -> Assessment:
    """Assess and record a start or an end; returns whether marking must pause.

    The start and end UPDATEs are conditional on the current state, so of several
    evaluators deciding the same thing at once only the first records the event (the
    others wait for its row lock, then find nothing to change). An evaluation that
    had to add up FOLD_AFTER or more status deltas also folds them (skipped while
    another evaluator folds), which keeps the fleet size cheap to read.
    """
    assessment = assess(uow.conn, settings)
    if assessment.pending_deltas >= FOLD_AFTER:
        fold_pending(uow.conn)
    if assessment.paused:
        params = {"reason": assessment.reason, "figures": dumps(assessment.figures)}
        if uow.conn.execute(_START, params).first() is not None:
            record_event_on_commit(
                uow,
                EventType.REGISTRY_SELF_PRESERVATION,
                None,
                {"active": True, "reason": assessment.reason, "figures": assessment.figures},
            )
            log.warning(
                "self-preservation ON (%s): automatic unreachable-marking paused; %s",
                assessment.reason,
                assessment.figures,
            )
        else:
            uow.conn.execute(_REFRESH, params)
    else:
        ended = uow.conn.execute(_END).first()
        if ended is not None:
            duration = round(float(ended.duration), 1)
            record_event_on_commit(
                uow,
                EventType.REGISTRY_SELF_PRESERVATION,
                None,
                {"active": False, "reason": ended.reason, "duration_seconds": duration},
            )
            log.warning(
                "self-preservation OFF after %.0f s (was %s): marking resumes; %s",
                duration,
                ended.reason,
                assessment.figures,
            )
    if not uow.recorded_events:
        # Nothing announced: a fold lost in a crash is lost whole (deltas and counts
        # together), so this commit need not wait for the disk.
        uow.conn.execute(_ASYNC_COMMIT)
    paused = assessment.paused
    uow.after_commit(lambda: metrics.set_self_preservation(paused))
    if settings.self_preservation_reuse_seconds > 0:
        # Published with (after) the commit, so a start or end is what sweeps reuse.
        uow.on_commit(lambda pipe: remember(pipe, assessment, settings))
    return assessment


def evaluate_now(settings: Settings) -> Assessment:
    """`evaluate` in its own transaction (its event is published on commit)."""
    with unit_of_work() as uow:
        return evaluate(uow, settings)


def evaluate_recent(settings: Settings) -> Assessment:
    """What a sweep tick asks: a reusable recent evaluation (see `reuse`), or a fresh one."""
    return reused_assessment(settings) or evaluate_now(settings)


_STATE = text(
    """
    SELECT active, reason, figures, since, updated_at,
           EXTRACT(EPOCH FROM now() - since) AS active_for
    FROM registry_self_preservation WHERE id = 1
    """
)


def current_state(conn: Connection) -> dict[str, Any]:
    """What the shared state says (for operators: `molecule-registry self-preservation`)."""
    row = conn.execute(_STATE).one()
    backlog = measure_backlog(conn)
    return {
        "active": row.active,
        "reason": row.reason if row.active else None,
        "since": row.since.isoformat() if row.active and row.since else None,
        "active_for_seconds": round(float(row.active_for), 1) if row.active else None,
        # Kept in the row after an episode ends; shown only while they explain a pause.
        "figures": row.figures if row.active else None,
        "evaluated_at": row.updated_at.isoformat(),
        "backlog_seconds": round(backlog.seconds, 1),
    }
