"""The board's gate: its Host names only (403), GET only (405), and no caching.

Wrapped around every board route, before routing: a foreign Host gets 403 whatever
the path or method (DNS-rebinding defence, registry/board/hosts.py), any method but
GET then gets 405 (the board is read-only; HEAD too, as before). Every response is
marked `no-store` (the fleet changes by the second) and `nosniff`.
"""

from __future__ import annotations

import json
import logging

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.board.hosts import HostCheck

log = logging.getLogger("gateway.board")


async def send_error(
    send: Send, status: int, message: str, *, extra: dict[str, str] | None = None
) -> None:
    """A JSON `{"error": ...}` response, as every board error is."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in (extra or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BoardGuard:
    """ASGI middleware: refuse foreign hosts and writes, mark every response uncacheable."""

    def __init__(self, app: ASGIApp, host_check: HostCheck) -> None:
        self.app = app
        self.host_check = host_check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        host = Headers(scope=scope).get("host")
        if not self.host_check.allows(host):
            log.info("board: refused a request for Host %r", host)
            await send_error(marked, 403, "this board does not serve that Host name")
        elif scope["method"] != "GET":
            await send_error(
                marked, 405, "the board is read-only: GET only", extra={"Allow": "GET"}
            )
        else:
            await self.app(scope, receive, marked)
