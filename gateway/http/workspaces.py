"""`GET /workspaces/{id}/state`: what an agent polls to learn it was paused or deleted."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.http.common import authorize, gateway_of, path_id
from registry import directory


async def state(request: Request) -> JSONResponse:
    workspace_id = path_id(request)
    engine = gateway_of(request).engine

    def lookup() -> dict[str, object] | None:
        with engine.connect() as conn:
            return directory.workspace_state(conn, workspace_id)

    found = await run_in_threadpool(lookup)
    if found is None:
        # The original's answer: the agent stops on `deleted: true`.
        # Answered before the token check: removing a workspace revokes its tokens, and
        # its agent must still learn that it was deleted (and stop).
        return JSONResponse({"workspace_id": str(workspace_id), "deleted": True}, status_code=404)
    await authorize(request, workspace_id)
    return JSONResponse(found)
