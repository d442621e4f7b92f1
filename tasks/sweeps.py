"""Periodic tasks on the registry.sweeps queue (CONTRACT §5, §7), and the heartbeat probe.

No retries on the sweeps: the next tick does the same work, so a run failing on a
dependency is logged and skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from molecule_registry_client.names import (
    HEARTBEAT_PROBE_TASK,
    HEARTBEAT_QUEUE,
    RELAY_EVENTS_TASK,
    SWEEP_BACKSTOP_TASK,
    SWEEP_HEALTH_TASK,
)
from registry import metrics
from registry.config import get_settings
from registry.db import get_engine, get_redis
from registry.events.outbox import relay_unpublished_events
from registry.ingestion.payloads import PayloadError, parse_payload
from registry.liveness.selfpreservation import (
    HeartbeatProbePayload,
    record_probe,
    send_probe_if_due,
)
from registry.schedule import expires_for
from registry.sweeps.backstop import sweep_backstop
from registry.sweeps.containers import open_container_backend
from registry.sweeps.health import sweep_health, sweep_remote_agents
from tasks.base import RegistryTask
from workers.app import app

log = logging.getLogger(__name__)


@app.task(name=RELAY_EVENTS_TASK, base=RegistryTask, max_retries=0)
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


def _send_probe(payload: dict[str, Any]) -> None:
    # Sent by the backstop and health ticks alike: the probe cadence is the faster of
    # the two intervals, and "only when none is waiting" keeps it to one in flight.
    app.send_task(HEARTBEAT_PROBE_TASK, args=[payload], queue=HEARTBEAT_QUEUE)


@app.task(name=SWEEP_BACKSTOP_TASK, base=RegistryTask, max_retries=0)
@metrics.observe_sweep("backstop")
def sweep_backstop_task() -> dict[str, Any]:
    settings = get_settings()
    send_probe_if_due(settings, _send_probe)
    result = sweep_backstop(settings)
    if result["more"]:
        # A full batch: drain the rest now rather than one interval later.
        sweep_backstop_task.apply_async(expires=expires_for(settings.backstop_sweep_interval))
    return result


@app.task(name=SWEEP_HEALTH_TASK, base=RegistryTask, max_retries=0)
@metrics.observe_sweep("health")
def sweep_health_task(remote_only: bool = False) -> dict[str, Any]:
    """Both passes; `remote_only` (set only by its own re-queue) drains remote agents."""
    settings = get_settings()
    send_probe_if_due(settings, _send_probe)
    if remote_only:
        remote = sweep_remote_agents(settings)
        result = {"status": "ok", "changed": remote["changed"], "remote": remote}
    else:
        with open_container_backend(settings) as checker:
            result = sweep_health(settings, checker)
    if isinstance(result["remote"], dict) and result["remote"].get("more"):
        # A full remote batch: drain the rest now (the container pass waits its tick).
        sweep_health_task.apply_async(
            kwargs={"remote_only": True}, expires=expires_for(settings.health_sweep_interval)
        )
    return result


# Consumed by the heartbeat workers (it travels registry.heartbeats); lives here with
# the sweep that sends it. Fire-and-forget like a heartbeat.
@app.task(name=HEARTBEAT_PROBE_TASK, base=RegistryTask, ignore_result=True)
def heartbeat_probe_task(payload: Any) -> dict[str, Any]:
    try:
        probe = parse_payload(HeartbeatProbePayload, payload)
    except PayloadError as exc:
        return exc.as_result()
    with get_engine().begin() as conn:
        lag = record_probe(conn, probe)
    threshold = get_settings().heartbeat_backlog_seconds
    if lag is not None and lag > threshold:
        log.warning("heartbeat queue lag %.1f s (above %d s)", lag, threshold)
    return {"status": "ok", "lag_seconds": lag}
