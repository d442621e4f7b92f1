"""registry.prune_events (CONTRACT §3) and registry.reconcile_status_counts, on registry.sweeps.

No retries: the next tick does the same work.
"""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import PRUNE_EVENTS_TASK, RECONCILE_STATUS_COUNTS_TASK
from registry import metrics
from registry.config import get_settings
from registry.db import get_engine
from registry.events import retention
from registry.liveness.selfpreservation.counts import reconcile
from registry.schedule import expires_for
from tasks.base import RegistryTask
from workers.app import app


@app.task(name=PRUNE_EVENTS_TASK, base=RegistryTask, max_retries=0)
@metrics.observe_sweep("prune_events")
def prune_events_task() -> dict[str, Any]:
    settings = get_settings()
    result = retention.prune_events(
        settings, batch_size=retention.BATCH_SIZE, max_batches=retention.MAX_BATCHES
    ).result()
    if result["more"]:
        # A long backlog (retention just switched on): continue now, one bounded run at
        # a time, rather than one interval later.
        prune_events_task.apply_async(expires=expires_for(settings.prune_events_interval))
    return result


@app.task(name=RECONCILE_STATUS_COUNTS_TASK, base=RegistryTask, max_retries=0)
@metrics.observe_sweep("reconcile_status_counts")
def reconcile_status_counts_task() -> dict[str, Any]:
    with get_engine().begin() as conn:
        drift = reconcile(conn)
    return {
        "status": "ok",
        "changed": len(drift),
        "drift": {status: exact - believed for status, (exact, believed) in drift.items()},
    }
