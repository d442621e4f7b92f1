"""One accepted WebSocket connection, from its replay to its close.

Tasks that end the session: the pump (replay, then the live queue), the client going
away, the client falling behind (its queue over the bound), and, for an agent, the
periodic re-check of its token and peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable

from sqlalchemy.exc import SQLAlchemyError
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.admission import Viewer, agent_token_valid
from gateway.clients import Client, frame_key
from gateway.fanout import Fanout
from gateway.frames import (
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_TOO_OLD,
    CLOSE_TOO_SLOW,
    event_frame,
    too_old_frame,
)
from gateway.peers import talk_set
from gateway.resume import replay
from registry.events.subscriber import Position, ReplayTooOld
from registry.events.subscriber.dedup import RecentIds

log = logging.getLogger("gateway.websocket")

# An agent's peers change rarely (a workspace added, moved or removed): re-read them,
# and re-check its token, this often (jittered, so a thousand agents spread out).
PEERS_REFRESH_SECONDS = 5.0
# One frame that takes longer than this to hand to the socket means the client is not
# reading: it is closed as too slow, like one whose queue overflowed.
SEND_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0


class TooSlow(Exception):
    pass


class Revoked(Exception):
    pass


def load_peers(fanout: Fanout, viewer: Viewer) -> frozenset[str] | None:
    """The agent's peers, or None when its token is no longer valid (blocking)."""
    assert viewer.workspace_id is not None
    with fanout.engine.connect() as conn:
        if not agent_token_valid(conn, viewer.workspace_id, viewer.token):
            return None
        return talk_set(conn, viewer.workspace_id)


class Session:
    def __init__(self, ws: WebSocket, client: Client, fanout: Fanout, since: Position | None):
        self.ws = ws
        self.client = client
        self.fanout = fanout
        self.since = since
        # Keys of frames sent by the replay: the live queue, filled meanwhile, may hold
        # them again. The overlap is at most what the queue holds.
        self.replayed = RecentIds(4 * client.limit + 1000)

    async def run(self) -> None:
        tasks = {
            asyncio.create_task(self._pump(), name="pump"),
            asyncio.create_task(self._drain_incoming(), name="incoming"),
            asyncio.create_task(self.client.overflowed.wait(), name="overflow"),
            asyncio.create_task(self.fanout.closing.wait(), name="closing"),
        }
        if not self.client.viewer.is_canvas:
            tasks.add(asyncio.create_task(self._refresh_peers(), name="peers"))
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        first = next(iter(done))
        error = None if first.cancelled() else first.exception()
        if first.get_name() == "overflow" or isinstance(error, TooSlow):
            await self._close(
                CLOSE_TOO_SLOW,
                f"too slow: more than {self.client.limit} frames behind; "
                "reconnect with ?since=<position of the last frame received>",
            )
        elif isinstance(error, ReplayTooOld):
            with contextlib.suppress(Exception):
                await self._send(too_old_frame(error.notice.until))
            await self._close(CLOSE_TOO_OLD, "since is older than the kept history")
        elif first.get_name() == "closing":
            await self._close(
                CLOSE_GOING_AWAY, "gateway stopping; reconnect with ?since=<last position>"
            )
        elif isinstance(error, Revoked):
            await self._close(CLOSE_FORBIDDEN, "workspace removed or token revoked")
        elif first.get_name() == "incoming" or isinstance(error, WebSocketDisconnect):
            return  # the client went away
        elif error is not None:
            log.error("gateway websocket: connection failed: %r", error)
            await self._close(1011, "internal error")

    async def _pump(self) -> None:
        if self.since is not None:
            async for event, position in replay(self.fanout, self.since):
                if self.client.wants(event):
                    key = frame_key(event)
                    await self._send(event_frame(event, position.token()))
                    if key is not None:
                        self.replayed.add(key)
        queue = self.client.queue
        while True:
            key, text = await queue.get()
            if key is not None and key in self.replayed:
                continue  # sent by the replay already
            await self._send(text)

    async def _send(self, text: str) -> None:
        try:
            await asyncio.wait_for(self.ws.send_text(text), SEND_TIMEOUT_SECONDS)
        except TimeoutError:
            raise TooSlow from None

    async def _drain_incoming(self) -> None:
        """Clients have nothing to say; reading notices their going away."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return

    async def _refresh_peers(self) -> None:
        while True:
            await asyncio.sleep(PEERS_REFRESH_SECONDS * random.uniform(0.8, 1.2))
            try:
                peers = await asyncio.to_thread(load_peers, self.fanout, self.client.viewer)
            except SQLAlchemyError as exc:
                # Keep the last known set: dropping events meanwhile would lose them.
                log.warning("gateway websocket: peers not refreshed: %s", type(exc).__name__)
                continue
            if peers is None:
                raise Revoked
            self.client.peers = peers

    async def _close(self, code: int, reason: str) -> None:
        close: Awaitable[None] = self.ws.close(code, reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close, CLOSE_TIMEOUT_SECONDS)
