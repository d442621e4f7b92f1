"""`POST /registry/heartbeat`, the gateway's hot path, as a raw ASGI route.

Every other call goes through Starlette (its error middlewares, the router, a Request
object, a Response object). A heartbeat is answered here before any of that runs:
on this box that stack was most of the event loop's time per heartbeat
(docs/PERFORMANCE.md, gateway section). The rules are the very same functions the
Starlette handlers use: the edge (`gateway.edge.Edge`, one limiter for both paths),
the 64 KiB body limit, the JSON-object rule, the registry's §4.2 model, the token
check and the coalescer; the answers (status, JSON error text, headers) are the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import Gateway
from gateway.edge import Edge
from gateway.errors import STORE_ERRORS, STORE_UNAVAILABLE, Refused
from gateway.http.common import (
    MAX_BODY_BYTES,
    authorize_header,
    check_declared_length,
    parse_json_object,
    too_large,
    unavailable,
    validated,
)
from gateway.http.quickcheck import certain_workspace_id
from gateway.publisher import BrokerUnavailable
from registry.ingestion.payloads import HeartbeatPayload

HEARTBEAT_PATH = "/registry/heartbeat"
MODEL_FIELDS = frozenset(HeartbeatPayload.model_fields)
HEARTBEAT_FIELDS = MODEL_FIELDS - {"auth_token"}
# The answer to every accepted heartbeat, encoded once.
HEARTBEAT_OK = b'{"status":"ok"}'
_JSON = (b"content-type", b"application/json")


async def accept(gateway: Gateway, body: dict[str, Any], authorization: str | None) -> None:
    """Validate, authenticate and hand one heartbeat to the coalescer; returns once its
    batch is in the broker. Raises Refused (400, 401, 503)."""
    workspace_id = certain_workspace_id(body, MODEL_FIELDS)
    if workspace_id is None:  # the model decides, and names what is wrong
        workspace_id = validated(HeartbeatPayload, body).workspace_id
    token = await authorize_header(gateway, authorization, workspace_id)
    # The fields the registry's model knows, as sent (the worker validates them again),
    # stamped with when the gateway received it unless the agent said when it sent it.
    item = {key: value for key, value in body.items() if key in HEARTBEAT_FIELDS}
    item.setdefault("sent_at", time.time())
    if token is not None:
        item["auth_token"] = token
    try:
        await gateway.publisher.heartbeat(item)
    except BrokerUnavailable:
        raise unavailable("the registry's broker is unavailable") from None


class HeartbeatRoute:
    """The outermost ASGI app: POST /registry/heartbeat here, everything else to `app`
    (whose lifespan opens the shared resources, found in `app.state.gateway`)."""

    def __init__(self, app: ASGIApp, edge: Edge) -> None:
        self.app = app
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)  # lifespan, WebSocket, other calls, 405
            return
        verdict, refusal = self.edge.screen(scope)
        if refusal is not None:
            await self.edge.refuse(send, refusal, verdict)
            return
        limits = verdict.headers()
        try:
            authorization, declared = None, ""
            for name, value in scope["headers"]:
                if name == b"authorization" and authorization is None:
                    authorization = value.decode("latin-1")
                elif name == b"content-length":
                    declared = value.decode("latin-1")
            check_declared_length(declared)
            raw = await _body(receive)
            if raw is None:
                return  # the caller went away
            gateway: Gateway = self.app.state.gateway  # type: ignore[attr-defined]
            await accept(gateway, parse_json_object(raw), authorization)
        except Refused as exc:
            await _answer(send, exc.status, _encode(exc.body), limits, exc.headers)
            return
        except STORE_ERRORS:
            # PostgreSQL (the token check) is down: the caller may try again shortly.
            status, body, headers = STORE_UNAVAILABLE
            await _answer(send, status, _encode(body), limits, headers)
            return
        await _answer(send, 200, HEARTBEAT_OK, limits)


async def _body(receive: Receive) -> bytes | None:
    """The whole body (413 past the limit); None if the caller disconnected."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise too_large()
        if not message.get("more_body", False):
            return body


def _encode(body: Mapping[str, Any]) -> bytes:
    # As Starlette's JSONResponse encodes it.
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    limits: list[tuple[bytes, bytes]],
    headers: Mapping[str, str] | None = None,
) -> None:
    raw = [(b"content-length", str(len(body)).encode()), _JSON]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    raw.extend(limits)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
