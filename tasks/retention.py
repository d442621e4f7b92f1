"""registry.prune_events (CONTRACT §3) and registry.reconcile_status_counts, on registry.sweeps.

No retries: the next tick does the same work.
"""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import PRUNE_EVENTS_TASK, RECONCILE_STATUS_COUNTS_TASK
from registry.config import get_settings
from registry.db import get_engine
from registry.events import retention
from registry.liveness.selfpreservation.counts import reconcile
from tasks.base import PeriodicTask, periodic_task


@periodic_task(
    PRUNE_EVENTS_TASK, entry="prune-events", every="prune_events_interval", sweep="prune_events"
)
def prune_events_task(self: PeriodicTask) -> dict[str, Any]:
    result = retention.prune_events(
        get_settings(), batch_size=retention.BATCH_SIZE, max_batches=retention.MAX_BATCHES
    ).result()
    if result["more"]:
        # A long backlog (retention just switched on): continue now, one bounded run at
        # a time, rather than one interval later.
        self.send_now()
    return result


@periodic_task(
    RECONCILE_STATUS_COUNTS_TASK,
    entry="reconcile-status-counts",
    every="status_counts_reconcile_interval",
    sweep="reconcile_status_counts",
)
def reconcile_status_counts_task(self: PeriodicTask) -> dict[str, Any]:
    with get_engine().begin() as conn:
        drift = reconcile(conn)
    return {
        "status": "ok",
        "changed": len(drift),
        "drift": {status: exact - believed for status, (exact, believed) in drift.items()},
    }
