"""Live broadcast-only events from the `events:broadcast` channel (CONTRACT §7).

Heartbeats and task updates are published on the channel only (a setting may add
them to the stream for small fleets). A subscriber asked for them listens on the
channel as well: broadcast-only events are taken from there, recorded events from the
stream (which orders, resumes and de-duplicates them), and any message on the channel
also wakes the subscriber to read the stream at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis

from registry.events.outbox import BROADCAST_CHANNEL
from registry.events.subscriber.items import ReceivedEvent, parse_time
from registry.statuses import BROADCAST_ONLY_EVENTS

log = logging.getLogger("registry.events.subscriber")
_BROADCAST_ONLY = frozenset(str(t) for t in BROADCAST_ONLY_EVENTS)


def is_broadcast_only(event_type: str) -> bool:
    return event_type in _BROADCAST_ONLY


def live_event(body: str) -> ReceivedEvent | None:
    """A broadcast-only event from its published JSON; None for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not is_broadcast_only(str(data.get("event"))):
        return None
    workspace_id, payload = data.get("workspace_id"), data.get("payload")
    return ReceivedEvent(
        type=str(data["event"]),
        workspace_id=workspace_id if isinstance(workspace_id, str) else None,
        timestamp=parse_time(data.get("timestamp"), datetime.now(UTC)),
        payload=payload if isinstance(payload, dict) else {},
        event_id=None,
        stream_id=None,
    )


class BroadcastListener:
    """The subscriber's own pub/sub connection to `events:broadcast`."""

    def __init__(self, client: redis.Redis, channel: str = BROADCAST_CHANNEL) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._channel = channel
        self._subscribed = False

    def subscribe(self) -> None:
        if not self._subscribed:
            self._pubsub.subscribe(self._channel)
            self._subscribed = True

    def receive(self, timeout: float) -> tuple[list[tuple[str, ReceivedEvent]], bool]:
        """Broadcast-only events (with their body) that came within `timeout` seconds,
        and whether any message came at all (then the stream may have news too)."""
        self.subscribe()
        found: list[tuple[str, ReceivedEvent]] = []
        woke = False
        message: Any = self._pubsub.get_message(timeout=timeout)
        while message is not None:
            if message.get("type") == "message":
                woke = True
                data = message.get("data")
                body = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                event = live_event(body)
                if event is not None:
                    found.append((body, event))
            message = self._pubsub.get_message(timeout=0)
        return found, woke

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):  # closing a dead connection
            self._pubsub.close()
