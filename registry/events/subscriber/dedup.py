"""De-duplication: publication is at least once, delivery once per subscriber."""

from __future__ import annotations

from collections import deque


class RecentIds:
    """The last N delivered event ids: at-least-once publication, once-only delivery."""

    def __init__(self, size: int) -> None:
        self._order: deque[int] = deque()
        self._ids: set[int] = set()
        self._size = size

    def __contains__(self, event_id: int) -> bool:
        return event_id in self._ids

    def add(self, event_id: int) -> None:
        if event_id in self._ids:
            return
        self._order.append(event_id)
        self._ids.add(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())
