"""The beat schedule and the routes, built from the tasks' own declarations (CONTRACT §4, §5).

Each periodic task declares its beat entry, interval setting and queue beside itself
(`tasks.base.periodic_task`), each message task its queue (`message_task`); nothing
here names a task. Importing this module imports every task module (`TASK_MODULES`,
also celeryconfig's `imports`), so the declarations are complete.

Every beat entry expires just below its interval: a backlog of sweeps behind a
stalled worker is dropped instead of piling up, and the next tick does the same work.
Several beats may run at once (CONTRACT §1): each sweep changes a row with a
conditional UPDATE over `FOR UPDATE SKIP LOCKED` candidates, so a doubled tick changes
nothing twice and records no event twice.
"""

from __future__ import annotations

import importlib
from typing import Any

from molecule_registry_client.names import queue_for
from registry.config import Settings
from tasks.base import DECLARATIONS, Declaration

TASK_MODULES: tuple[str, ...] = (
    "tasks.registration",
    "tasks.heartbeats",
    "tasks.lifecycle",
    "tasks.sweeps",  # backstop, health, outbox relay, heartbeat probe
    "tasks.maintenance",  # provisioning timeout, hibernation, orphans
    "tasks.access",
    "tasks.retention",  # history retention, status-count reconciliation
    "tasks.insight",  # incidents and flapping (CONTRACT §13)
)

for _module in TASK_MODULES:
    importlib.import_module(_module)


def declarations() -> dict[str, Declaration]:
    """Every declared task, by name."""
    return dict(DECLARATIONS)


def periodic() -> list[Declaration]:
    return [d for d in DECLARATIONS.values() if d.entry is not None]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule`: one entry per periodic task, intervals from `settings`."""
    return {
        d.entry: {
            "task": d.name,
            "schedule": float(d.interval(settings)),
            "args": (),
            "options": {"queue": d.queue, "expires": d.expires(settings)},
        }
        for d in periodic()
        if d.entry is not None
    }


def route(name: str, *_: Any, **__: Any) -> dict[str, str]:
    """Celery router: a task's declared queue. A name this worker does not define
    (sent by name from a newer producer) goes where the client library routes it."""
    declared = DECLARATIONS.get(name)
    return {"queue": declared.queue if declared else queue_for(name)}
