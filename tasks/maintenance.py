"""registry.sweep_provisioning, registry.sweep_hibernation, registry.sweep_orphans (CONTRACT §5).

Each task builds what its sweep needs from the settings (the container backend from
CONTAINER_BACKEND) and calls it; its beat entry, interval setting and queue are
declared beside it.

The orphan sweep also runs once when beat starts (`beat_init`, which fires for a
standalone `celery beat` and for `worker --beat` alike): a container orphaned while
the platform was down is reaped at once instead of one interval later. Beat rather
than `worker_ready`, because every worker process would send one; more than one beat
is harmless (the sweep holds a cluster-wide lock).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import beat_init

from molecule_registry_client.names import (
    SWEEP_HIBERNATION_TASK,
    SWEEP_ORPHANS_TASK,
    SWEEP_PROVISIONING_TASK,
)
from registry.config import get_settings
from registry.sweeps.containers import open_container_backend
from registry.sweeps.hibernation import deadline_for, sweep_hibernation
from registry.sweeps.orphans import sweep_orphans
from registry.sweeps.provisioning import sweep_provisioning
from tasks.base import PeriodicTask, periodic_task

log = logging.getLogger(__name__)


@periodic_task(
    SWEEP_PROVISIONING_TASK,
    entry="sweep-provisioning",
    every="provision_sweep_interval",
    sweep="provisioning",
)
def sweep_provisioning_task(self: PeriodicTask) -> dict[str, Any]:
    settings = get_settings()
    with self.transaction() as uow:
        result = sweep_provisioning(uow, timeout_override=settings.provision_timeout_seconds)
    if result["more"]:
        self.send_now()
    return result


@periodic_task(
    SWEEP_HIBERNATION_TASK,
    entry="sweep-hibernation",
    every="hibernation_sweep_interval",
    sweep="hibernation",
)
def sweep_hibernation_task(self: PeriodicTask) -> dict[str, Any]:
    settings = get_settings()
    with open_container_backend(settings) as backend:
        # The deadline follows HIBERNATION_SWEEP_INTERVAL (not a fixed 60 s).
        return sweep_hibernation(backend, deadline_seconds=deadline_for(settings))


@periodic_task(
    SWEEP_ORPHANS_TASK, entry="sweep-orphans", every="orphan_sweep_interval", sweep="orphans"
)
def sweep_orphans_task(self: PeriodicTask) -> dict[str, Any]:
    with open_container_backend(get_settings()) as backend:
        return sweep_orphans(backend)


@beat_init.connect
def sweep_orphans_at_start(sender: Any = None, **_: Any) -> None:
    try:
        # Through the app of the beat that started (its Service is the sender), not
        # whichever app is current in this process.
        app = getattr(sender, "app", None)
        task = app.tasks[SWEEP_ORPHANS_TASK] if app is not None else sweep_orphans_task
        task.send_now()
    except Exception:  # the broker may still be starting; the schedule catches up
        log.exception("could not send the start-up orphan sweep")
    else:
        log.info("start-up orphan sweep sent")
