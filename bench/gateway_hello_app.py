"""The yardstick of bench/gateway.py: a hello-world Starlette endpoint.

Served by the same uvicorn (httptools, uvloop) as the gateway, it answers the same
POST with the same JSON and does nothing else: the ceiling an HTTP endpoint on this
stack reaches on this machine.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/registry/heartbeat", hello, methods=["POST"])])
