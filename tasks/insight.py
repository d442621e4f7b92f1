"""registry.sweep_insight (CONTRACT §13), on registry.sweeps: incidents and flapping.

No retries: the next tick does the same work.
"""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import SWEEP_INSIGHT_TASK
from registry.config import get_settings
from registry.insight.sweep import sweep_insight
from tasks.base import PeriodicTask, periodic_task


@periodic_task(
    SWEEP_INSIGHT_TASK, entry="sweep-insight", every="insight_sweep_interval", sweep="insight"
)
def sweep_insight_task(self: PeriodicTask) -> dict[str, Any]:
    return sweep_insight(get_settings())
