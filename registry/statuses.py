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
# A runtime with no container of its own (the original's test and demo runtime): the
# container sweeps leave it alone, like `external` (CONTRACT §12).
MOCK_RUNTIME = "mock"
# Runtimes whose delivery mode defaults to poll (CONTRACT §4.1 step 2, §12): they run
# where the platform cannot dial them.
POLL_RUNTIMES: frozenset[str] = frozenset({EXTERNAL_RUNTIME, "kimi", "kimi-cli"})
# Runtimes without a platform container: no container check, no stale-token revoking.
CONTAINERLESS_RUNTIMES: tuple[str, ...] = (EXTERNAL_RUNTIME, MOCK_RUNTIME)
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
    # Fleet insight (CONTRACT §13).
    REGISTRY_INCIDENT = "REGISTRY_INCIDENT"
    WORKSPACE_FLAPPING = "WORKSPACE_FLAPPING"
    WORKSPACE_STABLE = "WORKSPACE_STABLE"


# Published but never written to structure_events (their volume is one per heartbeat).
BROADCAST_ONLY_EVENTS: frozenset[EventType] = frozenset(
    {EventType.TASK_UPDATED, EventType.WORKSPACE_HEARTBEAT}
)

# The event recorded when a workspace enters a status through an unreachable path.
UNREACHABLE_EVENT: dict[Status, EventType] = {
    Status.OFFLINE: EventType.WORKSPACE_OFFLINE,
    Status.AWAITING_AGENT: EventType.WORKSPACE_AWAITING_AGENT,
}

# The status a workspace is in after each status-changing event (flapping counts these).
STATUS_AFTER_EVENT: dict[EventType, Status] = {
    EventType.WORKSPACE_ONLINE: Status.ONLINE,
    EventType.WORKSPACE_DEGRADED: Status.DEGRADED,
    EventType.WORKSPACE_OFFLINE: Status.OFFLINE,
    EventType.WORKSPACE_AWAITING_AGENT: Status.AWAITING_AGENT,
    EventType.WORKSPACE_PROVISION_FAILED: Status.FAILED,
    EventType.WORKSPACE_HIBERNATED: Status.HIBERNATED,
    EventType.WORKSPACE_REMOVED: Status.REMOVED,
}
