"""After each periodic task, the worker notes that it ran (registry/lifesigns.py).

A signal handler rather than code in tasks/: the tasks stay thin, and the note is
written whether the sweep succeeded or failed (it ran: beat and a sweep worker live).
Never fails or delays the task beyond one Redis round trip.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_postrun

from molecule_registry_client.names import SWEEP_TASKS
from registry.db import get_redis
from registry.lifesigns import mark_sweep_run

log = logging.getLogger(__name__)


@task_postrun.connect
def _note_sweep_run(task: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    if name not in SWEEP_TASKS:
        return
    try:
        mark_sweep_run(get_redis(), name)
    except Exception as exc:  # a missing note must never fail the sweep
        log.warning("could not note the run of %s: %s", name, exc)
