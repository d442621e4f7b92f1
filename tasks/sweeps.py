"""Periodic tasks on the registry.sweeps queue (SPEC §5, §7)."""

from __future__ import annotations

from typing import Any

from registry.config import get_settings
from registry.db import get_engine, get_redis
from registry.events import relay_unpublished_events
from tasks.base import RegistryTask
from workers.app import app


@app.task(name="registry.relay_events", base=RegistryTask, max_retries=0)
def relay_events_task() -> dict[str, Any]:
    settings = get_settings()
    with get_engine().begin() as conn:
        relayed = relay_unpublished_events(
            conn,
            get_redis(),
            grace_seconds=settings.relay_grace_seconds,
            stream_maxlen=settings.events_stream_maxlen,
        )
    return {"status": "ok", "changed": relayed}
