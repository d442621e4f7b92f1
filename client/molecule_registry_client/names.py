"""Queue names and routing (CONTRACT §4): the names producers use, with no Celery import."""

from __future__ import annotations

DEFAULT_QUEUE = "registry"
HEARTBEAT_QUEUE = "registry.heartbeats"
SWEEP_QUEUE = "registry.sweeps"
QUEUE_NAMES: tuple[str, ...] = (DEFAULT_QUEUE, HEARTBEAT_QUEUE, SWEEP_QUEUE)

# RabbitMQ queue types. A queue's type is fixed when it is first declared, and every
# later declaration must name the same one (RabbitMQ refuses a mismatch), so producers
# declare the queues with the type the workers use (BROKER_QUEUE_TYPE).
QUEUE_TYPES: tuple[str, ...] = ("classic", "quorum")


def queue_arguments(queue_type: str = "classic") -> dict[str, str]:
    """The `x-queue-type` declaration argument for a queue type (none for classic)."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue type {queue_type!r}: one of {', '.join(QUEUE_TYPES)}")
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


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
# History retention (CONTRACT §3): deletes structure_events older than the window.
PRUNE_EVENTS_TASK = "registry.prune_events"
# Extension: the exact recount behind self-preservation's fleet size (rarely).
RECONCILE_STATUS_COUNTS_TASK = "registry.reconcile_status_counts"
# Extension (CONTRACT §13): incidents updated and resolved, flapping cleared.
SWEEP_INSIGHT_TASK = "registry.sweep_insight"
SWEEP_TASKS: tuple[str, ...] = (
    SWEEP_BACKSTOP_TASK,
    SWEEP_HEALTH_TASK,
    SWEEP_PROVISIONING_TASK,
    SWEEP_HIBERNATION_TASK,
    SWEEP_ORPHANS_TASK,
    RELAY_EVENTS_TASK,
    PRUNE_EVENTS_TASK,
    RECONCILE_STATUS_COUNTS_TASK,
    SWEEP_INSIGHT_TASK,
)


def queue_for(task_name: str) -> str:
    """The queue a task is routed to (a heartbeat flood never starves the others)."""
    if task_name in (HEARTBEAT_TASK, HEARTBEAT_BATCH_TASK, HEARTBEAT_PROBE_TASK):
        return HEARTBEAT_QUEUE
    if task_name in SWEEP_TASKS:
        return SWEEP_QUEUE
    return DEFAULT_QUEUE
