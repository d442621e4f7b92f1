"""The smallest gateway app serving `/ws`, for tests (the real one is gateway/app.py)."""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.websocket import websocket_lifespan, websocket_routes
from registry.config import get_settings


def build() -> Starlette:
    return Starlette(routes=websocket_routes(get_settings()), lifespan=websocket_lifespan)
