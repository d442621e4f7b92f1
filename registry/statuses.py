"""Workspace statuses and event types: the vocabulary every other module uses."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PROVISIONING = "provisioning"
    AWAITING_AGENT = "awaiting_agent"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    FAILED = "failed"
    PAUSED = "paused"
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    REMOVED = "removed"


ALL_STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

EXTERNAL_RUNTIME = "external"
DEFAULT_RUNTIME = "langgraph"


class EventType(StrEnum):
    WORKSPACE_ONLINE = "WORKSPACE_ONLINE"
    WORKSPACE_DEGRADED = "WORKSPACE_DEGRADED"
    WORKSPACE_OFFLINE = "WORKSPACE_OFFLINE"
    WORKSPACE_AWAITING_AGENT = "WORKSPACE_AWAITING_AGENT"
    WORKSPACE_PROVISION_FAILED = "WORKSPACE_PROVISION_FAILED"
    WORKSPACE_HIBERNATED = "WORKSPACE_HIBERNATED"
    WORKSPACE_REMOVED = "WORKSPACE_REMOVED"
    AGENT_CARD_UPDATED = "AGENT_CARD_UPDATED"
    REGISTRY_SELF_PRESERVATION = "REGISTRY_SELF_PRESERVATION"
    TASK_UPDATED = "TASK_UPDATED"
    WORKSPACE_HEARTBEAT = "WORKSPACE_HEARTBEAT"


# Published but never written to structure_events (their volume is one per heartbeat).
BROADCAST_ONLY_EVENTS: frozenset[EventType] = frozenset(
    {EventType.TASK_UPDATED, EventType.WORKSPACE_HEARTBEAT}
)

# The event recorded when a workspace enters a status through an unreachable path.
UNREACHABLE_EVENT: dict[Status, EventType] = {
    Status.OFFLINE: EventType.WORKSPACE_OFFLINE,
    Status.AWAITING_AGENT: EventType.WORKSPACE_AWAITING_AGENT,
}
