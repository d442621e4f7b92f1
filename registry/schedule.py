"""The beat schedule (SPEC §5): intervals from settings, each run expiring before the next.

An `expires` just below the interval means a backlog of sweeps is dropped instead of
piling up behind a stalled worker: the next tick does the same work anyway.

Several beats may run at once (SPEC §1): each sweep changes a row with a conditional
UPDATE over `FOR UPDATE SKIP LOCKED` candidates, so a doubled tick changes nothing
twice and records no event twice.
"""

from __future__ import annotations

from typing import Any

from registry.config import Settings
from registry.queues import SWEEP_QUEUE


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
        "sweep-backstop": _entry("registry.sweep_backstop", settings.backstop_sweep_interval),
        "sweep-health": _entry("registry.sweep_health", settings.health_sweep_interval),
        "sweep-provisioning": _entry(
            "registry.sweep_provisioning", settings.provision_sweep_interval
        ),
        "sweep-hibernation": _entry(
            "registry.sweep_hibernation", settings.hibernation_sweep_interval
        ),
        "sweep-orphans": _entry("registry.sweep_orphans", settings.orphan_sweep_interval),
        "relay-events": _entry("registry.relay_events", settings.relay_events_interval),
    }
