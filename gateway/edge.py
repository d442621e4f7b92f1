"""Rules every call meets before any handler runs: the rate limit and the org header.

A pure ASGI middleware (no per-request task or body copy, as Starlette's
BaseHTTPMiddleware would add): it counts the call, refuses it with 429 or 403 itself,
and adds the `X-RateLimit-*` headers to every answer, the handlers' and the router's
404/405 included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.ratelimit import RateLimiter, Verdict

ORG_HEADER = b"x-molecule-org-id"


def _caller_key(scope: Scope) -> str:
    """The rate-limit key: the bearer token or the address.

    The token is kept only as Python's own hash of the header (SipHash, keyed per
    process): no plaintext in memory, and a tenth of a SHA-256's cost on the hot path.
    A collision would only make two callers share a budget, never authorise anything.
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            return f"t:{hash(value):x}"
    client = scope.get("client")
    return "a:" + (client[0] if client else "unknown")


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


@dataclass(frozen=True)
class EdgeRefusal:
    status: int
    body: dict[str, object]
    extra: list[tuple[bytes, bytes]]


class Edge:
    """The rules themselves, shared by the middleware and the heartbeat's raw route
    (gateway.http.heartbeat) so both count against one limiter."""

    def __init__(self, limiter: RateLimiter, org_id: str) -> None:
        self.limiter = limiter
        self.org_id = org_id.encode()

    def screen(self, scope: Scope) -> tuple[Verdict, EdgeRefusal | None]:
        """Count the call; the verdict, and the refusal if the call may not go on."""
        verdict = self.limiter.hit(_caller_key(scope))
        if not verdict.allowed:
            retry = verdict.retry_after(time.time())
            body = {"error": "rate limit exceeded", "retry_after": retry}
            return verdict, EdgeRefusal(429, body, [(b"retry-after", str(retry).encode())])
        if self.org_id and _header(scope, ORG_HEADER) != self.org_id:
            return verdict, EdgeRefusal(403, {"error": "X-Molecule-Org-Id: wrong organization"}, [])
        return verdict, None

    async def refuse(self, send: Send, refusal: EdgeRefusal, verdict: Verdict) -> None:
        await _answer(send, refusal.status, refusal.body, verdict, extra=refusal.extra)


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, edge: Edge, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.edge = edge
        # Paths that are not the original platform's API (the operator's board, which a
        # browser opens without the org header) pass through untouched.
        self.exempt = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and scope["path"].startswith(self.exempt)):
            await self.app(scope, receive, send)
            return
        verdict, refusal = self.edge.screen(scope)
        if refusal is not None:
            await self.edge.refuse(send, refusal, verdict)
            return
        limit_headers = verdict.headers()

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *limit_headers]
            await send(message)

        await self.app(scope, receive, send_with_limits)


async def _answer(
    send: Send,
    status: int,
    body: dict[str, object],
    verdict: Verdict,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *verdict.headers(),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
