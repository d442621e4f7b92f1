"""Queue names and routing (CONTRACT §4): the names producers use, with no Celery import."""

from __future__ import annotations

DEFAULT_QUEUE = "registry"
HEARTBEAT_QUEUE = "registry.heartbeats"
SWEEP_QUEUE = "registry.sweeps"
QUEUE_NAMES: tuple[str, ...] = (DEFAULT_QUEUE, HEARTBEAT_QUEUE, SWEEP_QUEUE)

HEARTBEAT_TASK = "registry.heartbeat"
# Up to MAX_HEARTBEAT_BATCH heartbeats in one message (gateways, agent hosts).
HEARTBEAT_BATCH_TASK = "registry.heartbeat_batch"
MAX_HEARTBEAT_BATCH = 1000
# Measures the heartbeat queue's lag (registry.selfpreservation): it must travel the
# same queue as the heartbeats.
HEARTBEAT_PROBE_TASK = "registry.heartbeat_probe"
REGISTER_TASK = "registry.register"
UPDATE_CARD_TASK = "registry.update_card"
CREATE_WORKSPACE_TASK = "registry.create_workspace"
REMOVE_WORKSPACE_TASK = "registry.remove_workspace"
CAN_COMMUNICATE_TASK = "registry.can_communicate"

# Periodic tasks (CONTRACT §5); each can also be sent by name at any time.
SWEEP_BACKSTOP_TASK = "registry.sweep_backstop"
SWEEP_HEALTH_TASK = "registry.sweep_health"
SWEEP_PROVISIONING_TASK = "registry.sweep_provisioning"
SWEEP_HIBERNATION_TASK = "registry.sweep_hibernation"
SWEEP_ORPHANS_TASK = "registry.sweep_orphans"
RELAY_EVENTS_TASK = "registry.relay_events"
SWEEP_TASKS: tuple[str, ...] = (
    SWEEP_BACKSTOP_TASK,
    SWEEP_HEALTH_TASK,
    SWEEP_PROVISIONING_TASK,
    SWEEP_HIBERNATION_TASK,
    SWEEP_ORPHANS_TASK,
    RELAY_EVENTS_TASK,
)


def queue_for(task_name: str) -> str:
    """The queue a task is routed to (a heartbeat flood never starves the others)."""
    if task_name in (HEARTBEAT_TASK, HEARTBEAT_BATCH_TASK, HEARTBEAT_PROBE_TASK):
        return HEARTBEAT_QUEUE
    if task_name in SWEEP_TASKS:
        return SWEEP_QUEUE
    return DEFAULT_QUEUE
