"""De-duplication: publication is at least once, delivery once per subscriber.

Recorded events are known by their `event_id`; broadcast-only events (which have
none) by their published body, which is the same bytes on the channel and the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable


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
