"""The gateway's Starlette application: `build_app(settings)`.

Shared resources (the broker publisher, the reply reader, the token cache, the
database engine) are opened once in the lifespan and closed there. The edge rules
(rate limit, org header) are one middleware; the body, payload and token rules are
one helper each (gateway.http.common), so no handler can skip them. The heartbeat, the
hot path, is answered by a raw ASGI route in front of Starlette
(gateway.http.heartbeat) that calls the same rules and shares the edge's limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from gateway.auth import TokenChecker, lookup_engine
from gateway.context import Gateway
from gateway.edge import Edge, EdgeMiddleware
from gateway.errors import (
    STORE_ERRORS,
    Refused,
    on_http_exception,
    on_refused,
    on_store_unavailable,
)
from gateway.http import routes
from gateway.http.heartbeat import HeartbeatRoute
from gateway.publisher import Publisher
from gateway.ratelimit import RateLimiter
from gateway.replies import Replies
from registry.config import Settings


def build_app(
    settings: Settings,
    extra_routes: Sequence[BaseRoute] = (),
    *,
    lifespans: Sequence[Callable[[Starlette], contextlib.AbstractAsyncContextManager[Any]]] = (),
    edge_exempt: tuple[str, ...] = (),
) -> ASGIApp:
    """The gateway application.

    `extra_routes`: further route lists (the WebSocket `/ws`, the board) are appended
    here by whoever builds the process; they share the lifespan's resources through
    `app.state.gateway`, and `lifespans` (their own start and stop) run inside the
    gateway's. Paths under an `edge_exempt` prefix skip the edge rules (the board).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from registry.db import get_engine

        engine = get_engine(settings.database_url)
        lookups = lookup_engine(settings)
        publisher = Publisher(
            settings.effective_broker_url,
            queue_type="quorum" if settings.quorum_queues else "classic",
            max_items=settings.gateway_heartbeat_batch_max_items,
            max_wait=settings.gateway_heartbeat_batch_max_wait_ms / 1000,
        )
        publisher.start(asyncio.get_running_loop())
        replies = Replies(settings.effective_result_backend)
        app.state.gateway = Gateway(
            settings=settings,
            engine=engine,
            tokens=TokenChecker(lookups, settings.gateway_token_cache_seconds),
            publisher=publisher,
            replies=replies,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                for extra in lifespans:
                    await stack.enter_async_context(extra(app))
                yield
        finally:
            # Heartbeats still waiting are published before the process ends.
            await asyncio.to_thread(publisher.close)
            await replies.close()
            lookups.dispose()

    # --- extra route lists (WebSocket, board) are appended here -----------------------
    all_routes: list[BaseRoute] = [*routes(), *extra_routes]
    # -----------------------------------------------------------------------------------
    edge = Edge(RateLimiter(settings.rate_limit), settings.org_id)
    app = Starlette(
        routes=all_routes,
        middleware=[
            Middleware(
                EdgeMiddleware,  # type: ignore[arg-type]
                edge=edge,
                exempt_prefixes=edge_exempt,
            )
        ],
        exception_handlers={
            Refused: on_refused,
            HTTPException: on_http_exception,
            **dict.fromkeys(STORE_ERRORS, on_store_unavailable),
        },
        lifespan=lifespan,
    )
    # The heartbeat, the hot path, is answered ahead of Starlette (same rules, same edge).
    return HeartbeatRoute(app, edge)
