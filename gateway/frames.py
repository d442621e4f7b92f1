"""What a WebSocket client receives: the §7 event as a frame, plus its `position`.

A frame is `{event, workspace_id, timestamp, payload, position}` (CONTRACT §11), plus
`event_id` for a recorded event, as in §7 (clients may de-duplicate by it). A
status-changing event's payload always says the new `status`: the original's canvas
reads it from there, and our recorded payloads describe the change (reason, previous
status) without repeating the status the event type already names.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from registry.events.outbox import rfc3339
from registry.events.subscriber import ReceivedEvent
from registry.statuses import STATUS_AFTER_EVENT

STREAM_TOO_OLD = "STREAM_TOO_OLD"

# Close codes (4000-4999 are the application's own, RFC 6455 §7.4.2).
CLOSE_TOO_SLOW = 4008  # the client fell behind its send queue's bound; resume from its position
CLOSE_FORBIDDEN = 4403  # the agent's workspace was removed or its token revoked meanwhile
CLOSE_TOO_OLD = 4410  # `since` lies before the kept history (Kubernetes answers 410 Gone)
CLOSE_GOING_AWAY = 1001  # the gateway is stopping; reconnect with `since`


def frame_payload(event: ReceivedEvent) -> dict[str, Any]:
    """The event's payload, with the new `status` for a status change."""
    status = STATUS_AFTER_EVENT.get(event.type)
    if status is None or "status" in event.payload:
        return event.payload
    return {**event.payload, "status": str(status)}


def event_frame(event: ReceivedEvent, position: str) -> str:
    """The frame's JSON text (built once per event, shared by every connection)."""
    body: dict[str, Any] = {
        "event": event.type,
        "workspace_id": event.workspace_id,
        "timestamp": rfc3339(event.timestamp),
        "payload": frame_payload(event),
    }
    if event.event_id is not None:
        body["event_id"] = event.event_id
    body["position"] = position
    return json.dumps(body, separators=(",", ":"), default=str)


def too_old_frame(oldest: datetime) -> str:
    """Sent once before closing with CLOSE_TOO_OLD: `oldest` is the oldest event kept."""
    return json.dumps(
        {
            "event": STREAM_TOO_OLD,
            "workspace_id": None,
            "timestamp": rfc3339(datetime.now(UTC)),
            "payload": {"oldest": rfc3339(oldest)},
        },
        separators=(",", ":"),
    )
