"""Broadcast-only events at most once per workspace per second (CONTRACT §11).

Heartbeats and task updates arrive once per heartbeat; a canvas needs the latest state,
not every beat. The first event of a workspace goes out at once; later ones within the
same second are coalesced, and the newest of them goes out when the second ends, so
the last state is never held back for long nor lost. A task update outranks a
heartbeat: the original's canvas shows the current task and ignores heartbeats, and a
heartbeat batch publishes a workspace's task update just before its heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from registry.events.subscriber import ReceivedEvent
from registry.statuses import EventType

INTERVAL_SECONDS = 1.0


class BroadcastThrottle:
    """Calls `emit` at most once per workspace per `interval` (on the event loop)."""

    def __init__(
        self, emit: Callable[[ReceivedEvent], None], interval: float = INTERVAL_SECONDS
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._last: dict[str | None, float] = {}
        self._held: dict[str | None, ReceivedEvent] = {}
        self._pruned_at = time.monotonic()

    def offer(self, event: ReceivedEvent) -> None:
        key = event.workspace_id
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self._interval:
            self._last[key] = now
            self._emit(event)
            self._forget_idle(now)
            return
        held = self._held.get(key)
        if held is None:  # the first held one schedules the window's end
            asyncio.get_running_loop().call_later(last + self._interval - now, self._release, key)
        if held is None or _rank(event) >= _rank(held):
            self._held[key] = event  # the newest wins, but a heartbeat never hides a task update

    def _release(self, key: str | None) -> None:
        event = self._held.pop(key, None)
        if event is not None:
            self._last[key] = time.monotonic()
            self._emit(event)

    def _forget_idle(self, now: float) -> None:
        # Bounded memory: a workspace quiet for a whole window needs no entry (pruned
        # every few seconds, not per event: a fleet's heartbeats come by the thousand).
        if now - self._pruned_at < 10 * self._interval:
            return
        self._pruned_at = now
        quiet = [k for k, t in self._last.items() if now - t >= self._interval]
        for k in quiet:
            if k not in self._held:
                del self._last[k]


def _rank(event: ReceivedEvent) -> int:
    return 1 if event.type == EventType.TASK_UPDATED else 0
