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
import time
from uuid import UUID

from sqlalchemy.exc import SQLAlchemyError
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.admission import Viewer, agent_token_valid
from gateway.clients import GONE, Client, frame_key
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
from registry.access import can_communicate_ids
from registry.events.subscriber import Position, ReplayTooOld

log = logging.getLogger("gateway.websocket")

# An agent's peers change when a workspace is created (its events are checked one by
# one, see `_may_see`) or removed (the fan-out drops it on WORKSPACE_REMOVED): workspaces
# never move. The token and the set are re-read this often as well, for what no event
# announces (a token revoked as stale); jittered, so a thousand agents spread out.
PEERS_REFRESH_SECONDS = 30.0
# One frame that takes longer than this to hand to the socket means the client is not
# reading: it is closed as too slow, like one whose queue overflowed.
SEND_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 10.0


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
        # Bounded: a cancellation that races a completing send can be lost (the task
        # then waits on a queue no one fills); the session must end regardless.
        await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_SECONDS)
        await self._end({t.get_name() for t in done}, _errors(done))

    async def _end(self, ended: set[str], errors: list[BaseException]) -> None:
        """Close with the code that says why (several tasks may end together)."""
        if "overflow" in ended or any(isinstance(e, TooSlow) for e in errors):
            await self._close(
                CLOSE_TOO_SLOW,
                f"too slow: more than {self.client.limit} frames behind; "
                "reconnect with ?since=<position of the last frame received>",
            )
            return
        for error in errors:
            if isinstance(error, ReplayTooOld):
                with contextlib.suppress(Exception):
                    await self._send(too_old_frame(error.notice.until))
                await self._close(CLOSE_TOO_OLD, "since is older than the kept history")
                return
            if isinstance(error, Revoked):
                await self._close(CLOSE_FORBIDDEN, "workspace removed or token revoked")
                return
        if "incoming" in ended or any(isinstance(e, WebSocketDisconnect) for e in errors):
            return  # the client went away
        if "closing" in ended:
            await self._close(
                CLOSE_GOING_AWAY, "gateway stopping; reconnect with ?since=<last position>"
            )
            return
        for error in errors:
            log.error("gateway websocket: connection failed: %r", error)
        await self._close(1011, "internal error")

    async def _pump(self) -> None:
        if self.since is not None:
            # The gap first, without the live queue (a long replay during a burst would
            # overflow it before the first frame went out); then join the fan-out and
            # replay the short stretch between the two, de-duplicated against the queue.
            position = await self._replay(self.since)
            self.fanout.add(self.client)
            await self._replay(position)
        queue = self.client.queue
        while not self.client.overflowed.is_set():
            frame = await queue.get()
            if frame is GONE:
                raise Revoked
            key, text, check = frame
            if key is not None and key in self.client.replayed:
                continue  # sent by the replay already
            if check is not None and not await self._may_see(check):
                continue
            # No timeout here: a client that stops reading fills its queue and is closed
            # as too slow; one frame timer each would cost more than the send.
            await self.ws.send_text(text)

    async def _may_see(self, workspace_id: str) -> bool:
        """An agent and a workspace newer than its peer set: ask §9 once (cached until
        the next refresh)."""
        client = self.client
        if workspace_id in client.peers:
            return True
        if workspace_id in client.denied:
            return False
        assert client.viewer.workspace_id is not None
        caller, target = UUID(client.viewer.workspace_id), UUID(workspace_id)
        if await asyncio.to_thread(can_communicate_ids, self.fanout.engine, caller, target):
            client.peers = client.peers | {workspace_id}
            return True
        client.denied.add(workspace_id)
        return False

    async def _replay(self, since: Position) -> Position:
        """Send what follows `since`, up to now; the position reached."""
        position = since
        async for event, position in replay(self.fanout, since):
            if self.client.wants(event):
                await self._send(event_frame(event, position.token()))
                key = frame_key(event)
                if key is not None:
                    self.client.replayed.add(key)
        return position

    async def _send(self, text: str) -> None:
        """Send, or raise TooSlow (the replay's frames: no queue bounds them)."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await self.ws.send_text(text)
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
            as_of = time.monotonic()
            try:
                peers = await asyncio.to_thread(load_peers, self.fanout, self.client.viewer)
            except SQLAlchemyError as exc:
                # Keep the last known set: dropping events meanwhile would lose them.
                log.warning("gateway websocket: peers not refreshed: %s", type(exc).__name__)
                continue
            if peers is None:
                raise Revoked
            self.client.peers = peers
            self.client.peers_as_of = as_of
            self.client.denied.clear()

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.ws.close(code, reason)


def _errors(tasks: set[asyncio.Task[None]]) -> list[BaseException]:
    return [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
