"""`/registry/*` calls: registration, heartbeats, card updates, discovery, peers, access."""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import Refused
from gateway.http.common import (
    authorize,
    call_worker,
    gateway_of,
    json_object,
    path_id,
    refusal_of,
    validated,
)
from gateway.http.heartbeat import HEARTBEAT_OK, accept
from molecule_registry_client.names import REGISTER_TASK, UPDATE_CARD_TASK
from registry import directory
from registry.access import can_communicate_ids
from registry.ingestion.payloads import (
    CanCommunicatePayload,
    RegisterPayload,
    UpdateCardPayload,
)


async def register(request: Request) -> JSONResponse:
    payload = validated(RegisterPayload, await json_object(request))
    token = await authorize(request, payload.id)
    message = payload.model_dump(mode="json", exclude_none=True) | {
        "auth_token": token,
        # A secret only this gateway holds (CONTRACT §4.1 step 7): if the broker delivers
        # the message again after the worker committed it, the same token is answered;
        # a copy re-sent by anyone else is not. Never logged (redaction: a token's shape).
        "request_secret": secrets.token_urlsafe(32),
    }
    reply = await call_worker(request, REGISTER_TASK, _without_none(message))
    if (refused := refusal_of(reply)) is not None:
        raise refused
    answer = {"status": "registered", "delivery_mode": reply.get("delivery_mode")}
    if reply.get("auth_token"):
        answer["auth_token"] = reply["auth_token"]
    return JSONResponse(answer)


async def heartbeat(request: Request) -> Response:
    # Served by the raw route (gateway.http.heartbeat) ahead of Starlette; kept here so
    # the router knows the path (405 for other methods) and for apps built without it.
    await accept(
        gateway_of(request), await json_object(request), request.headers.get("authorization")
    )
    return Response(HEARTBEAT_OK, media_type="application/json")


async def update_card(request: Request) -> JSONResponse:
    payload = validated(UpdateCardPayload, await json_object(request))
    token = await authorize(request, payload.workspace_id)
    message = payload.model_dump(mode="json", exclude_none=True) | {"auth_token": token}
    reply = await call_worker(request, UPDATE_CARD_TASK, _without_none(message))
    if (refused := refusal_of(reply)) is not None:
        raise refused
    return JSONResponse({"status": "updated"})


async def discover(request: Request) -> JSONResponse:
    target = path_id(request)
    raw_caller = request.headers.get("x-workspace-id")
    if not raw_caller:
        raise Refused(400, "X-Workspace-ID: header is required")
    try:
        caller = validated(CanCommunicatePayload, {"caller_id": raw_caller, "target_id": target})
    except Refused:
        raise Refused(400, "X-Workspace-ID: must be a UUID") from None
    await authorize(request, caller.caller_id)
    engine = gateway_of(request).engine

    def lookup() -> dict[str, object] | None:
        with engine.connect() as conn:
            return directory.workspace_address(conn, target)

    address = await run_in_threadpool(lookup)
    if address is None:
        raise Refused(404, "workspace not found")
    if not await run_in_threadpool(can_communicate_ids, engine, caller.caller_id, target):
        raise Refused(403, "not allowed to communicate with this workspace")
    return JSONResponse(address)


async def peers(request: Request) -> JSONResponse:
    workspace_id = path_id(request)
    await authorize(request, workspace_id)
    engine = gateway_of(request).engine

    def lookup() -> list[dict[str, object]] | None:
        with engine.connect() as conn:
            return directory.peers(conn, workspace_id)

    found = await run_in_threadpool(lookup)
    if found is None:
        raise Refused(404, "workspace not found")
    return JSONResponse(found)


async def check_access(request: Request) -> JSONResponse:
    payload = validated(CanCommunicatePayload, await json_object(request))
    allowed = await run_in_threadpool(
        can_communicate_ids, gateway_of(request).engine, payload.caller_id, payload.target_id
    )
    return JSONResponse({"allowed": allowed})


def _without_none(message: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in message.items() if value is not None}
