"""One connected WebSocket client as the fan-out sees it: what it may see, and its
bounded send queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.admission import Viewer
from registry.events.subscriber import ReceivedEvent
from registry.events.subscriber.items import RecentIds

REPLAY_DEDUP_WINDOW = 20_000

# (de-duplication key, frame text, workspace to check first). The key is the event id
# of a recorded event, else its stream id, else None (a broadcast-only event read live
# from the channel). The workspace is set for an agent and a workspace newer than its
# peer set: whether it may see it is asked before sending (CONTRACT §9).
Frame = tuple[int | str | None, str, str | None]


# Queued when an agent's own workspace is removed: its connection ends there.
GONE: Frame = (None, "", None)


def frame_key(event: ReceivedEvent) -> int | str | None:
    return event.event_id if event.event_id is not None else event.stream_id


class Client:
    """A connection's filter and queue. The queue is bounded by `limit`: a client that
    falls further behind is marked `overflowed` and closed, never silently skipped."""

    def __init__(self, viewer: Viewer, limit: int) -> None:
        self.viewer = viewer
        self.limit = limit
        self.queue: asyncio.Queue[Frame] = asyncio.Queue()
        self.overflowed = asyncio.Event()
        # An agent's peers (CONTRACT §9), itself included; refreshed while connected.
        self._peers: frozenset[str] = frozenset()
        # When the peer set was last read from the database (at the latest: set before
        # the read starts): a workspace that existed then is in it if it may be.
        self.peers_as_of = time.monotonic()
        # Told when the peers change (the fan-out's index of who sees what).
        self.on_peers: Callable[[Client, frozenset[str], frozenset[str]], None] | None = None
        self.denied: set[str] = set()  # new workspaces it may not talk to (until refreshed)
        # Keys of the frames a resuming client's replay sent: the shared reader may be
        # behind the replay and offer them again; they are not queued twice. As many
        # as the Subscriber de-duplicates.
        self.replayed = RecentIds(REPLAY_DEDUP_WINDOW)

    @property
    def peers(self) -> frozenset[str]:
        return self._peers

    @peers.setter
    def peers(self, peers: frozenset[str]) -> None:
        old, self._peers = self._peers, peers
        if self.on_peers is not None:
            self.on_peers(self, old, peers)

    def wants(self, event: ReceivedEvent) -> bool:
        if self.viewer.is_canvas:
            return True
        return event.workspace_id is not None and event.workspace_id in self.peers

    def removed(self, workspace_id: str) -> None:
        """A workspace was removed (§9: no one may talk to it any more)."""
        if workspace_id == self.viewer.workspace_id:
            self.queue.put_nowait(GONE)  # after the frames before it: then closed
        elif workspace_id in self.peers:
            self.peers = self.peers - {workspace_id}

    def offer(self, frame: Frame) -> None:
        """Queue a frame; past the bound, mark the client to be closed instead."""
        if self.overflowed.is_set():
            return  # it will be closed; it resumes from the last frame it received
        if frame[0] is not None and frame[0] in self.replayed:
            return  # the replay sent it: a repeat, not a loss
        if self.queue.qsize() >= self.limit:
            self.overflowed.set()
            return
        self.queue.put_nowait(frame)
