"""The beat schedule (CONTRACT §5): intervals from settings, each run expiring before the next.

An `expires` just below the interval means a backlog of sweeps is dropped instead of
piling up behind a stalled worker: the next tick does the same work anyway.

Several beats may run at once (CONTRACT §1): each sweep changes a row with a conditional
UPDATE over `FOR UPDATE SKIP LOCKED` candidates, so a doubled tick changes nothing
twice and records no event twice.
"""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import (
    PRUNE_EVENTS_TASK,
    RECONCILE_STATUS_COUNTS_TASK,
    RELAY_EVENTS_TASK,
    SWEEP_BACKSTOP_TASK,
    SWEEP_HEALTH_TASK,
    SWEEP_HIBERNATION_TASK,
    SWEEP_ORPHANS_TASK,
    SWEEP_PROVISIONING_TASK,
    SWEEP_QUEUE,
)
from registry.config import Settings


def expires_for(interval: int) -> float:
    """Seconds after which a sweep message is dropped: always below its interval."""
    return interval * 0.9


def _entry(task: str, interval: int) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": float(interval),
        "args": (),
        "options": {"queue": SWEEP_QUEUE, "expires": expires_for(interval)},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "sweep-backstop": _entry(SWEEP_BACKSTOP_TASK, settings.backstop_sweep_interval),
        "sweep-health": _entry(SWEEP_HEALTH_TASK, settings.health_sweep_interval),
        "sweep-provisioning": _entry(SWEEP_PROVISIONING_TASK, settings.provision_sweep_interval),
        "sweep-hibernation": _entry(SWEEP_HIBERNATION_TASK, settings.hibernation_sweep_interval),
        "sweep-orphans": _entry(SWEEP_ORPHANS_TASK, settings.orphan_sweep_interval),
        "relay-events": _entry(RELAY_EVENTS_TASK, settings.relay_events_interval),
        "prune-events": _entry(PRUNE_EVENTS_TASK, settings.prune_events_interval),
        "reconcile-status-counts": _entry(
            RECONCILE_STATUS_COUNTS_TASK, settings.status_counts_reconcile_interval
        ),
    }
