"""The gateway's WebSocket `GET /ws` (CONTRACT §11): the registry's events as the
original's frames, for canvases and agents, resumable and never silently dropped.

Mount it in the gateway app (at the top level or inside a `Mount`):

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with websocket_lifespan(app):  # the shared reader; closes sockets at the end
            yield

    app = Starlette(routes=[..., *websocket_routes(settings)], lifespan=lifespan)
    uvicorn.Config(app, host=host, port=port, **UVICORN_WS_OPTIONS)

Without `websocket_lifespan` the reader starts with the first connection and is not
stopped cleanly. `UVICORN_WS_OPTIONS`: the server's pings keep idle connections alive
(20 s), and no per-message deflate (see there).

Modules: `admission` (who may connect, as what), `peers` (§9 as a set), `audience`
(who receives an event), `clients` (a connection's filter and bounded queue), `fanout`
(the one reader per process), `throttle` (broadcast-only events, once a second),
`resume` (a resuming client's gap), `session` (one connection's life), `frames`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.admission import (
    Refusal,
    Viewer,
    admit_agent,
    admit_canvas,
    bearer,
    org_refusal,
)
from gateway.clients import Client
from gateway.fanout import Fanout
from gateway.session import Session, load_peers
from registry.config import Settings
from registry.db import get_engine
from registry.events.subscriber import Position

log = logging.getLogger("gateway.websocket")

UNAVAILABLE = Refusal(503, "registry database unavailable; retry")
# uvicorn.Config(..., **UVICORN_WS_OPTIONS): pings every 20 s keep idle connections
# alive (and drop dead ones); no per-message deflate, which compresses every frame once
# per connection (a third of the fan-out's CPU at a thousand connections) to save little
# on frames of a few hundred bytes.
UVICORN_WS_OPTIONS: dict[str, Any] = {
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    "ws_per_message_deflate": False,
}


class EventSocket:
    """The ASGI app behind `/ws`: admits a connection, then runs its `Session`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fanout = Fanout(get_engine(settings.database_url), settings.redis_url)
        self.sessions = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        raw_since = ws.query_params.get("since")
        since = None
        if raw_since is not None:
            try:
                since = Position.from_token(raw_since)
            except ValueError:
                await deny(ws, Refusal(400, "since: not a position"))
                return
        await self.fanout.start()
        viewer = await self.admit(ws)
        if isinstance(viewer, Refusal):
            await deny(ws, viewer)
            return
        client = Client(viewer, self.settings.gateway_ws_queue_frames)
        if not viewer.is_canvas:
            try:
                peers = await asyncio.to_thread(load_peers, self.fanout, viewer)
            except SQLAlchemyError:
                await deny(ws, UNAVAILABLE)
                return
            if peers is None:
                await deny(ws, Refusal(401, "missing or invalid token for this workspace"))
                return
            client.peers = peers
        if since is None:
            # Joined before accepting: what happens after the handshake is queued for
            # it. A resuming client joins once its gap is replayed (Session).
            self.fanout.add(client)
        self.sessions += 1
        try:
            await ws.accept()
            await Session(ws, client, self.fanout, since).run()
        finally:
            self.fanout.discard(client)
            self.sessions -= 1

    async def admit(self, ws: WebSocket) -> Viewer | Refusal:
        org = org_refusal(self.settings, ws.headers.get("x-molecule-org-id"))
        if org is not None:
            return org
        token = bearer(ws.headers.get("authorization"))
        workspace = ws.headers.get("x-workspace-id")
        if workspace is None:
            return admit_canvas(
                self.settings,
                ws.headers.get("origin"),
                ws.headers.get("host"),
                ws.url.scheme == "wss",
                token,
            )

        def check() -> Viewer | Refusal:
            try:
                with self.fanout.engine.connect() as conn:
                    return admit_agent(conn, workspace, token)
            except SQLAlchemyError:  # the token cannot be checked: refuse, and say why
                return UNAVAILABLE

        return await asyncio.to_thread(check)

    async def shutdown(self) -> None:
        """Close every connection (1001: reconnect with `since`) and stop the reader."""
        await self.fanout.stop()  # sets `closing`: each session closes itself
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.1)


async def deny(ws: WebSocket, refusal: Refusal) -> None:
    """Refuse at the handshake with an HTTP status and `{"error": …}`."""
    log.info("gateway websocket: refused (%d): %s", refusal.status, refusal.error)
    response = JSONResponse({"error": refusal.error}, status_code=refusal.status)
    try:
        await ws.send_denial_response(response)
    except RuntimeError:  # a server without the denial-response extension answers 403
        await ws.close()


def websocket_routes(settings: Settings) -> list[BaseRoute]:
    """The `/ws` route; its shared reader starts with `websocket_lifespan` (or lazily)."""
    return [WebSocketRoute("/ws", EventSocket(settings), name="events_websocket")]


def _sockets(app: Any) -> list[EventSocket]:
    """The `/ws` endpoints mounted in `app`, at any depth of `Mount`s."""
    found: list[EventSocket] = []
    for route in getattr(getattr(app, "router", app), "routes", []):
        inner = getattr(route, "app", None)
        if isinstance(inner, EventSocket):
            found.append(inner)
        elif inner is not None and inner is not app:
            found.extend(_sockets(inner))
    return found


@contextlib.asynccontextmanager
async def websocket_lifespan(app: Any) -> AsyncIterator[None]:
    """Start the `/ws` reader(s) of `app` before serving; close them at shutdown."""
    sockets = _sockets(app)
    for socket in sockets:
        await socket.fanout.start()
    try:
        yield
    finally:
        for socket in sockets:
            await socket.shutdown()


__all__ = ["UVICORN_WS_OPTIONS", "EventSocket", "websocket_lifespan", "websocket_routes"]
