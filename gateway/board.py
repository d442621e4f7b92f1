"""The fleet board's routes, for the gateway (at `/board`) or served alone (at `/`).

Routes, under the prefix: `/` (page), `/board.js`, `/board.css`,
`/api/snapshot[?limit=&after=]` (the fleet in pages, problems first),
`/api/snapshot?changed_since=<time>` (incremental), `/api/workspaces/<id>`,
`/api/workspaces/<id>/strip` (its status over the last 24 h),
`/api/events?since=<position>` (text/event-stream, board_events.py). The page uses
relative URLs only, so it works under any prefix; `<prefix>` without the slash
redirects to `<prefix>/`.

Every request is checked for its `Host` header and method first (board_guard.py).
Responses the browser accepts gzip for are gzipped (Starlette's GZipMiddleware:
bodies of 1 KiB or more; the event stream is never compressed, nor buffered).
The snapshot and details endpoints are blocking database reads: Starlette runs them
in its worker threads.

How the gateway mounts it (its Host check names the gateway's own address):

    board = Board(get_engine(), get_redis(), HostCheck(host, port, allowed_hosts))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with board_lifespan(board):  # streams end at SIGINT/SIGTERM and at exit
            yield

    app = Starlette(routes=[*board_routes(board, prefix="/board"), ...], lifespan=lifespan)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from uuid import UUID

import redis
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.board_events import DEFAULT_MAX_STREAMS, EventStream, EventStreams
from gateway.board_guard import BoardGuard
from gateway.signals import stop_on_signals
from registry.board.hosts import HostCheck
from registry.board.incidents import status_strip
from registry.board.snapshot import (
    BadRequest,
    changes_since,
    fleet_snapshot,
    one_workspace,
    ordered_fleet,
    parse_limit,
    parse_since,
)
from registry.events.subscriber import RETRYABLE_ERRORS
from registry.jsontext import dumps

log = logging.getLogger("gateway.board")

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/board.js": ("board.js", "text/javascript; charset=utf-8"),
    "/board.css": ("board.css", "text/css; charset=utf-8"),
}
GZIP_MIN_BYTES = 1024  # smaller bodies are not worth the header and the CPU
GZIP_LEVEL = 5  # most of level 9's ratio on JSON at a fraction of its CPU


class Board:
    """One board: its stores, the Host names it answers, its ordered reads, its streams."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        host_check: HostCheck,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self.engine = engine
        self.client = client
        self.host_check = host_check
        self.ordered = ordered_fleet(engine)  # later snapshot pages are sliced from it
        self.streams = EventStreams(engine, client, max_streams)

    def stop(self) -> None:
        """End every event stream within a second (thread-safe)."""
        self.streams.stop()


@asynccontextmanager
async def board_lifespan(board: Board) -> AsyncIterator[None]:
    """For the app's lifespan: the board's event streams end at SIGINT/SIGTERM.

    uvicorn waits for open connections to close *before* the lifespan's exit, and an
    event stream never closes by itself: so the streams are ended at the signal
    (the server's own handler runs next), not only at the exit.
    """
    restore = stop_on_signals(board.stop)
    try:
        yield
    finally:
        restore()
        board.stop()


def board_routes(board: Board, prefix: str = "") -> list[BaseRoute]:
    """The board's routes under `prefix` ("" or "/board"), each behind its guard."""
    prefix = prefix.rstrip("/")
    routes: list[BaseRoute] = [Mount(prefix, app=board_app(board))]
    if prefix:  # relative URLs need the slash: "/board" -> "/board/"
        routes.insert(0, Route(prefix, BoardGuard(_to_slash, board.host_check)))
    return routes


def board_app(board: Board) -> ASGIApp:
    """The board as one ASGI app (its paths from "/"): guard, gzip, routes, errors."""
    endpoints = _Endpoints(board)
    routes = [Route(path, endpoints.static_file(path)) for path in STATIC_FILES]
    routes += [
        Route("/api/snapshot", endpoints.snapshot),
        Route("/api/workspaces/{raw_id}", endpoints.workspace),
        Route("/api/workspaces/{raw_id}/strip", endpoints.strip),
        Route("/api/events", endpoints.events),
    ]
    handlers = {HTTPException: _http_error, BadRequest: _bad_request}
    handlers.update(dict.fromkeys(RETRYABLE_ERRORS, _stores_down))
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(BoardGuard, host_check=board.host_check),
            Middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL),
        ],
        exception_handlers=handlers,  # type: ignore[arg-type]
    )


class _Endpoints:
    def __init__(self, board: Board) -> None:
        self.board = board
        # Read once: the files ship with the package and do not change while it runs.
        folder = resources.files("registry.board").joinpath("static")
        self.files = {
            path: (folder.joinpath(name).read_bytes(), kind)
            for path, (name, kind) in STATIC_FILES.items()
        }

    def static_file(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        body, kind = self.files[path]

        async def static(request: Request) -> Response:
            return Response(body, media_type=kind)

        return static

    def snapshot(self, request: Request) -> Response:  # sync: run in a worker thread
        board, query = self.board, request.query_params
        since = query.get("changed_since")
        if since is not None:
            return _json_text(changes_since(board.engine, parse_since(since)))
        page = fleet_snapshot(
            board.engine,
            board.client,
            limit=parse_limit(query.get("limit")),
            after=query.get("after"),
            ordered=board.ordered,
        )
        return _json_text(page)

    def workspace(self, request: Request) -> Response:  # sync: run in a worker thread
        return self._one(request, one_workspace)

    def strip(self, request: Request) -> Response:  # sync: run in a worker thread
        """The workspace's status over the last 24 h (registry.board.incidents)."""
        return self._one(request, status_strip)

    def _one(self, request: Request, read: Callable[[Any, UUID], Any]) -> Response:
        """One workspace's answer from `read`: 400 for a malformed id, 404 for an unknown one."""
        raw_id = request.path_params["raw_id"]
        try:
            workspace_id = UUID(raw_id)
        except ValueError:
            return _error(400, f"{raw_id!r} is not a workspace id")
        with self.board.engine.connect() as conn:
            found = read(conn, workspace_id)
        if found is None:
            return _error(404, f"unknown workspace {workspace_id}")
        return _json_text(dumps(found))

    async def events(self, request: Request) -> EventStream:
        return self.board.streams.stream(
            request.query_params.get("since", ""), request.headers.get("Last-Event-ID")
        )


async def _to_slash(scope: Scope, receive: Receive, send: Send) -> None:
    url = Request(scope).url
    await RedirectResponse(url.replace(path=url.path + "/"))(scope, receive, send)


def _json_text(body: str, status: int = 200) -> Response:
    return Response(body.encode(), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "not found" if exc.status_code == 404 else exc.detail
    return _error(exc.status_code, message)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


async def _stores_down(request: Request, exc: Exception) -> Response:
    log.warning("board: %s", str(exc).strip().splitlines()[0])
    return _error(503, "registry stores unreachable; retry")
