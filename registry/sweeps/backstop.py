"""Stale-heartbeat backstop (CONTRACT §5): the liveness transition, from the database side.

Expiry notifications are fire-and-forget: lost while no listener runs, and a key
lost to a Redis restart never expires. So every `online`/`degraded` workspace whose
`last_heartbeat_at` is older than LIVENESS_TTL_SECONDS + BACKSTOP_GRACE_SECONDS (plus
the heartbeat queue's measured lag, see registry.liveness.selfpreservation) gets the same
transition as an expired key: `offline`, or `awaiting_agent` for external runtimes,
reason `liveness_expired`. Candidates come from the partial index
`ix_workspaces_live_heartbeat`, so a run costs in proportion to the stale rows.

An automatic path: it pauses while self-preservation is active.
"""

from __future__ import annotations

import logging
from typing import Any

from registry.config import Settings
from registry.liveness.selfpreservation import LIVENESS_EXPIRED, evaluate_recent
from registry.liveness.transitions import Unreachable, mark_unreachable
from registry.uow import UnitOfWork, unit_of_work

log = logging.getLogger(__name__)

BATCH_SIZE = 500

# `status IN (...)` literally, so the planner can use the partial index; the stale
# test is re-checked under the row lock inside mark_unreachable's statement.
STALE_SQL = (
    "w.status IN ('online', 'degraded') "
    "AND w.last_heartbeat_at < now() - make_interval(secs => :stale_after)"
)

# The index's order: the scan stops after `limit` rows, however many are stale.
ORDER_SQL = "w.last_heartbeat_at"


def mark_stale(
    uow: UnitOfWork, *, stale_after: float, limit: int = BATCH_SIZE
) -> list[Unreachable]:
    """Mark live workspaces whose last heartbeat is older than `stale_after` seconds."""
    return mark_unreachable(
        uow,
        reason=LIVENESS_EXPIRED,
        candidates_sql=STALE_SQL,
        params={"stale_after": stale_after},
        limit=limit,
        order_sql=ORDER_SQL,
    )


def sweep_backstop(settings: Settings, *, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """One backstop run: ask self-preservation, then mark one bounded batch.

    `more` in the result says the batch was full (the task re-queues itself).
    """
    assessment = evaluate_recent(settings)
    if assessment.paused:
        log.warning("backstop paused by self-preservation (%s); nothing marked", assessment.reason)
        return {
            "status": "ok",
            "changed": 0,
            "more": False,
            "paused": "self_preservation",
            "reason": assessment.reason,
        }
    stale_after = (
        settings.liveness_ttl_seconds + settings.backstop_grace_seconds + assessment.backlog_seconds
    )
    with unit_of_work() as uow:
        changed = mark_stale(uow, stale_after=stale_after, limit=batch_size)
    if changed:
        # The listener should have caught these: missed notifications or lost keys. One
        # line per batch (a batch can be 500 rows); each row at INFO.
        log.warning(
            "backstop: %d workspace(s) marked unreachable (no heartbeat for over %.0f s)",
            len(changed),
            stale_after,
        )
    for change in changed:
        log.info(
            "backstop: workspace %s %s -> %s",
            change.workspace_id,
            change.previous_status,
            change.new_status,
        )
    return {"status": "ok", "changed": len(changed), "more": len(changed) == batch_size}
