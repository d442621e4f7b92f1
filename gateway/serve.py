"""Running the gateway process on uvicorn (`molecule-registry gateway`)."""

from __future__ import annotations

import importlib.util
import logging

from starlette.types import ASGIApp

from registry.config import Settings
from registry.redaction import install_log_redaction


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    """Serve until interrupted. Never logs a token or an Authorization header: uvicorn's
    access log shows the method, path and status only, and every log record passes
    the registry's redaction (CONTRACT §4.1 step 8)."""
    import uvicorn

    install_log_redaction()
    logging.getLogger().setLevel(log_level.upper())
    from gateway.websocket import UVICORN_WS_OPTIONS

    uvicorn.run(
        assemble(settings, host, port),
        host=host,
        port=port,
        log_level=log_level.lower(),
        # The access log (method, path and status; never a header) is a formatted log
        # record per call on the hot path: written at `--log-level debug` only.
        access_log=log_level.lower() == "debug",
        # The C parser and event loop where installed (uvicorn[standard]); the pure
        # Python ones otherwise.
        http="httptools" if _available("httptools") else "h11",
        loop="uvloop" if _available("uvloop") else "asyncio",
        # Forwarded headers from a proxy are trusted only from localhost (uvicorn's
        # default), so the rate limit's client address cannot be forged from outside.
        proxy_headers=True,
        server_header=False,
        lifespan="on",
        # Pings keep idle WebSocket connections alive; no per-message deflate.
        **UVICORN_WS_OPTIONS,
    )


BOARD_PREFIX = "/board"


def assemble(settings: Settings, host: str, port: int) -> ASGIApp:
    """The whole gateway process's application: the original platform's HTTP calls, the
    canvas WebSocket `/ws`, and the fleet board at `/board` (one web stack)."""
    from gateway.app import build_app
    from gateway.board import Board, board_lifespan, board_routes
    from gateway.websocket import websocket_lifespan, websocket_routes
    from registry.board.hosts import HostCheck
    from registry.db import get_engine, get_redis

    board = Board(get_engine(settings.database_url), get_redis(), HostCheck(host, port))
    return build_app(
        settings,
        [*websocket_routes(settings), *board_routes(board, prefix=BOARD_PREFIX)],
        lifespans=[websocket_lifespan, lambda _app: board_lifespan(board)],
        edge_exempt=(BOARD_PREFIX,),
    )
