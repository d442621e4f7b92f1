"""What every handler does the same way: read the body, validate, authenticate, wait.

Handlers call these so that the 64 KiB limit, the JSON-object rule, the registry's
payload models and the edge token check are each written once.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from gateway.auth import bearer_token
from gateway.context import Gateway
from gateway.errors import RETRY_AFTER_SECONDS, Refused
from gateway.publisher import BrokerUnavailable
from gateway.replies import WorkerFailed
from registry.ingestion.payloads import PayloadError, parse_payload

MAX_BODY_BYTES = 64 * 1024
UNAUTHORIZED = "missing or invalid workspace auth token"

M = TypeVar("M", bound=BaseModel)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def unavailable(error: str) -> Refused:
    return Refused(503, error, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object: 413 over 64 KiB, 400 if not JSON or not an object."""
    check_declared_length(request.headers.get("content-length", ""))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large()
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


def too_large() -> Refused:
    return Refused(413, f"body: larger than {MAX_BODY_BYTES} bytes")


def check_declared_length(declared: str) -> None:
    """413 at once when the Content-Length header already says too much."""
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object: 400 if not JSON or not an object."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise Refused(400, "body: not valid JSON") from None
    if not isinstance(value, dict):
        raise Refused(400, f"body: must be a JSON object, not {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def validated(model: type[M], body: dict[str, Any]) -> M:
    """The registry's own payload model (CONTRACT §4): 400 naming each bad field.

    A body's own `auth_token` is never taken: the token travels as the bearer.
    """
    fields = {key: value for key, value in body.items() if key != "auth_token"}
    try:
        return parse_payload(model, fields)
    except PayloadError as exc:
        raise Refused(400, exc.error) from None


def path_id(request: Request, name: str = "id") -> UUID:
    raw = request.path_params[name]
    try:
        return UUID(raw)
    except ValueError:
        raise Refused(400, f"{name}: must be a UUID") from None


async def authorize(request: Request, workspace_id: UUID) -> str | None:
    """The bearer token, if the registry's rule admits it for `workspace_id`; else 401.

    Returns the token (None when the workspace has no live token and none was sent),
    which the handler forwards for the worker's own check.
    """
    return await authorize_header(
        gateway_of(request), request.headers.get("authorization"), workspace_id
    )


async def authorize_header(
    gateway: Gateway, authorization: str | None, workspace_id: UUID
) -> str | None:
    """`authorize` from the raw `Authorization` header's value."""
    try:
        token = bearer_token(authorization)
    except ValueError:
        raise Refused(401, UNAUTHORIZED) from None
    if not await gateway.tokens.allowed(workspace_id, token):
        raise Refused(401, UNAUTHORIZED)
    return token


async def call_worker(request: Request, task_name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Publish a message that keeps its result and wait for the worker's answer.

    503 with Retry-After when the broker refuses it or no answer comes in time (the
    message expires then, so no worker applies it afterwards).
    """
    gateway = gateway_of(request)
    timeout = gateway.settings.gateway_register_timeout_seconds
    try:
        task_id = await run_in_threadpool(
            gateway.publisher.send, task_name, payload, keep_result=True, expires_in=timeout
        )
    except BrokerUnavailable:
        raise unavailable("the registry's broker is unavailable") from None
    try:
        reply = await gateway.replies.wait(task_id, timeout)
    except WorkerFailed as exc:
        raise unavailable(f"the registry did not complete it: {exc}") from None
    if reply is None:
        raise unavailable(f"no answer from the registry within {timeout:g} s")
    return reply


def refusal_of(reply: dict[str, Any]) -> Refused | None:
    """A worker's refusal as the HTTP answer the original gives (400 or 401)."""
    status = reply.get("status")
    error = str(reply.get("error") or status)
    if status == "unauthorized":
        return Refused(401, UNAUTHORIZED)
    if status in ("rejected", "ignored"):
        return Refused(400, error)
    return None
