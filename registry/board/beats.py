"""Heartbeats and task updates for one board page, from the pub/sub channel, coalesced.

Broadcast-only events (CONTRACT §7: WORKSPACE_HEARTBEAT, TASK_UPDATED) are published
on `events:broadcast` and are not kept in the stream by default, so the page's
status changes come from the stream (resumable) and its heartbeat ages from here
(live only; a missed heartbeat is simply the next one). At fleet scale that is
~170 heartbeats a second for 5,000 workspaces: each drain keeps only the newest
event per workspace and type, and the page gets them as one message.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import redis

from registry.events.outbox import BROADCAST_CHANNEL
from registry.events.subscriber import RETRYABLE_ERRORS
from registry.events.text import describe
from registry.statuses import BROADCAST_ONLY_EVENTS

log = logging.getLogger(__name__)

BEAT_TYPES = frozenset(str(t) for t in BROADCAST_ONLY_EVENTS)
MAX_DRAIN = 50_000  # messages read per drain at most (the rest wait for the next one)


class ChannelBeats:
    """A subscription to the broadcast channel; `drain()` is non-blocking."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pubsub: Any = None

    def open(self) -> None:
        """Subscribe, and wait (briefly) until Redis confirms: no beat after this is missed."""
        try:
            self._subscribe()
        except RETRYABLE_ERRORS as exc:
            log.debug("board: broadcast channel: %s; subscribing later", exc)
            self.close()

    def _subscribe(self) -> None:
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(BROADCAST_CHANNEL)
        for _ in range(10):
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None and message.get("type") == "subscribe":
                return

    def drain(self) -> list[dict[str, Any]]:
        """The newest broadcast-only event per (workspace, type) since the last drain."""
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            if self._pubsub is None:
                self._subscribe()
            for _ in range(MAX_DRAIN):
                message = self._pubsub.get_message(timeout=0)
                if message is None:
                    break
                event = _beat(message.get("data")) if message.get("type") == "message" else None
                if event is not None:
                    newest[(event["workspace_id"], event["event"])] = event
        except RETRYABLE_ERRORS as exc:
            log.debug("board: broadcast channel: %s; resubscribing", exc)
            self.close()
        return list(newest.values())

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                self._pubsub.close()
            self._pubsub = None


def _beat(data: Any) -> dict[str, Any] | None:
    """The event as the page wants it, or None for anything but a well-formed beat."""
    try:
        body = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("event") not in BEAT_TYPES:
        return None
    workspace_id, payload = body.get("workspace_id"), body.get("payload")
    if not isinstance(workspace_id, str) or not isinstance(payload, dict):
        return None
    return {
        "event": body["event"],
        "workspace_id": workspace_id,
        "timestamp": body.get("timestamp"),
        "payload": payload,
        "gist": describe(body["event"], payload),
    }
