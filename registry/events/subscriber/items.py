"""What a subscriber hands out: a received event, or a notice that events were lost; and
the window of recent keys that hands each out once.

Publication is at least once, delivery once per subscriber: recorded events are known by
their `event_id`; broadcast-only events (which have none) by their published body, which
is the same bytes on the channel and the stream.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from registry.events.outbox import rfc3339
from registry.events.subscriber.position import stream_id_time


@dataclass(frozen=True)
class ReceivedEvent:
    """One event, as published (CONTRACT §7), with where it was read from."""

    type: str  # an EventType value; kept as text so a newer producer's type never breaks us
    workspace_id: str | None
    timestamp: datetime
    payload: dict[str, Any]
    event_id: int | None  # structure_events.id; None for broadcast-only events
    stream_id: str | None  # None when replayed from structure_events

    @property
    def replayed(self) -> bool:
        # Broadcast-only events read live from the channel have neither id.
        return self.stream_id is None and self.event_id is not None

    def as_dict(self) -> dict[str, Any]:
        """The published event JSON, plus `stream_id` (null when replayed)."""
        body: dict[str, Any] = {
            "event": self.type,
            "workspace_id": self.workspace_id,
            "timestamp": rfc3339(self.timestamp),
            "payload": self.payload,
        }
        if self.event_id is not None:
            body["event_id"] = self.event_id
        body["stream_id"] = self.stream_id
        return body

    @classmethod
    def from_stream(cls, stream_id: str, data: str) -> ReceivedEvent:
        body = json.loads(data)
        if not isinstance(body, dict) or not isinstance(body.get("event"), str):
            raise ValueError("not an event object")
        event_id, payload = body.get("event_id"), body.get("payload")
        workspace_id = body.get("workspace_id")
        return cls(
            type=body["event"],
            workspace_id=workspace_id if isinstance(workspace_id, str) else None,
            timestamp=parse_time(body.get("timestamp"), stream_id_time(stream_id)),
            payload=payload if isinstance(payload, dict) else {},
            event_id=event_id if isinstance(event_id, int) else None,
            stream_id=stream_id,
        )


@dataclass(frozen=True)
class StreamGap:
    """The stream lost entries this subscriber had not read yet.

    The recorded events of the gap follow at once, replayed from `structure_events`
    in id order (their `stream_id` is None); broadcast-only events of the gap
    (`TASK_UPDATED`, `WORKSPACE_HEARTBEAT`) are lost. `since`..`until` is the window.
    """

    reason: Literal["trimmed", "redis_reset", "too_old"]
    since: datetime
    until: datetime
    resume_stream_id: str  # the live stream continues after this entry

    def as_dict(self) -> dict[str, Any]:
        return {
            "gap": self.reason,
            "since": rfc3339(self.since),
            "until": rfc3339(self.until),
            "resume_stream_id": self.resume_stream_id,
        }

    def describe(self) -> str:
        what = "stream trimmed" if self.reason == "trimmed" else "Redis restarted"
        return (
            f"gap ({what}) from {rfc3339(self.since)} to {rfc3339(self.until)}: recorded "
            "events replayed from the database; heartbeats and task updates in it are lost"
        )


@dataclass(frozen=True)
class HistoryTooOld(StreamGap):
    """The history asked for is older than the retention window (a watch's "410 Gone").

    Comes right after the `StreamGap` whose replay needed it. Recorded events from
    `since` (None: unknown) to `until` (the oldest event kept) may have been pruned
    (`EVENTS_RETENTION_DAYS`); the replay goes on from the oldest event kept. With
    `Subscriber(..., too_old="raise")` the subscriber raises `ReplayTooOld` instead.
    """

    retention_days: int = 0

    def as_dict(self) -> dict[str, Any]:
        body = super().as_dict()
        body["since"] = rfc3339(self.since) if self.since.timestamp() > 0 else None
        body["retention_days"] = self.retention_days
        return body

    def describe(self) -> str:
        start = rfc3339(self.since) if self.since.timestamp() > 0 else "an unknown point"
        return (
            f"too old: history from {start} is older than the {self.retention_days}-day "
            f"retention window; recorded events before {rfc3339(self.until)} may be gone, "
            "replay continues from the oldest event kept"
        )


class ReplayTooOld(Exception):
    """Raised instead of handing out `HistoryTooOld` when the subscriber was told to."""

    def __init__(self, notice: HistoryTooOld) -> None:
        super().__init__(notice.describe())
        self.notice = notice


Item = ReceivedEvent | StreamGap


def parse_time(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return fallback


class RecentIds:
    """The last N delivered keys: at-least-once publication, once-only delivery."""

    def __init__(self, size: int) -> None:
        self._order: deque[Hashable] = deque()
        self._ids: set[Hashable] = set()
        self._size = size

    def __contains__(self, event_id: Hashable) -> bool:
        return event_id in self._ids

    def add(self, event_id: Hashable) -> None:
        if event_id in self._ids:
            return
        self._order.append(event_id)
        self._ids.add(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())
