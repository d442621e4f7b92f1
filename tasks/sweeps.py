"""Periodic tasks on the registry.sweeps queue (CONTRACT §5, §7), and the heartbeat probe.

Each periodic task declares its beat entry, interval setting and queue here, beside
itself; tasks/schedule.py builds the beat schedule from these declarations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from molecule_registry_client.names import (
    HEARTBEAT_PROBE_TASK,
    HEARTBEAT_QUEUE,
    RELAY_EVENTS_TASK,
    SWEEP_BACKSTOP_TASK,
    SWEEP_HEALTH_TASK,
)
from registry.config import get_settings
from registry.db import get_redis
from registry.events.outbox import relay_unpublished_events
from registry.liveness.selfpreservation import (
    HeartbeatProbePayload,
    record_probe,
    send_probe_if_due,
)
from registry.sweeps.backstop import sweep_backstop
from registry.sweeps.containers import open_container_backend
from registry.sweeps.health import sweep_health, sweep_remote_agents
from registry.uow import UnitOfWork
from tasks.base import PeriodicTask, RegistryTask, message_task, periodic_task

log = logging.getLogger(__name__)


@periodic_task(
    RELAY_EVENTS_TASK, entry="relay-events", every="relay_events_interval", sweep="relay_events"
)
def relay_events_task(self: PeriodicTask) -> dict[str, Any]:
    settings = get_settings()
    # Its own transaction: claimed outbox rows stay locked until Redis accepted them.
    with self.transaction() as uow:
        relayed = relay_unpublished_events(
            uow.conn,
            get_redis(),
            grace_seconds=settings.relay_grace_seconds,
            stream_maxlen=settings.events_stream_maxlen,
        )
    return {"status": "ok", "changed": relayed}


def _probe_sender(task: PeriodicTask) -> Callable[[dict[str, Any]], None]:
    """Sends the heartbeat-queue probe through the running task's own app. Sent by the
    backstop and health ticks alike: the probe cadence is the faster of the two
    intervals, and "only when none is waiting" keeps it to one in flight."""

    def send(payload: dict[str, Any]) -> None:
        task.app.send_task(HEARTBEAT_PROBE_TASK, args=[payload], queue=HEARTBEAT_QUEUE)

    return send


@periodic_task(
    SWEEP_BACKSTOP_TASK, entry="sweep-backstop", every="backstop_sweep_interval", sweep="backstop"
)
def sweep_backstop_task(self: PeriodicTask) -> dict[str, Any]:
    settings = get_settings()
    send_probe_if_due(settings, _probe_sender(self))
    result = sweep_backstop(settings)
    if result["more"]:
        self.send_now()
    return result


@periodic_task(
    SWEEP_HEALTH_TASK, entry="sweep-health", every="health_sweep_interval", sweep="health"
)
def sweep_health_task(self: PeriodicTask, remote_only: bool = False) -> dict[str, Any]:
    """Both passes; `remote_only` (set only by its own re-queue) drains remote agents."""
    settings = get_settings()
    send_probe_if_due(settings, _probe_sender(self))
    if remote_only:
        remote = sweep_remote_agents(settings)
        result = {"status": "ok", "changed": remote["changed"], "remote": remote}
    else:
        with open_container_backend(settings) as checker:
            result = sweep_health(settings, checker)
    if isinstance(result["remote"], dict) and result["remote"].get("more"):
        # A full remote batch: drain the rest now (the container pass waits its tick).
        self.send_now(remote_only=True)
    return result


def _record_probe(uow: UnitOfWork, probe: HeartbeatProbePayload) -> dict[str, Any]:
    lag = record_probe(uow.conn, probe)
    threshold = get_settings().heartbeat_backlog_seconds
    if lag is not None and lag > threshold:
        log.warning("heartbeat queue lag %.1f s (above %d s)", lag, threshold)
    return {"status": "ok", "lag_seconds": lag}


# Consumed by the heartbeat workers (it travels registry.heartbeats, so it measures
# that queue's lag); lives here with the sweeps that send it. Fire-and-forget.
@message_task(HEARTBEAT_PROBE_TASK, queue=HEARTBEAT_QUEUE, ignore_result=True)
def heartbeat_probe_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    return self.run_message(HeartbeatProbePayload, payload, _record_probe)
