"""What the gateway answers when it refuses a call: JSON `{"error": "<text>"}`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kombu.exceptions
import redis.exceptions
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

RETRY_AFTER_SECONDS = 5
# A store the gateway needs is down (PostgreSQL, the result backend, the broker):
# 503, and the caller may try again shortly.
STORE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
STORE_UNAVAILABLE = (
    503,
    {"error": "the registry is unavailable"},
    {"Retry-After": str(RETRY_AFTER_SECONDS)},
)


class Refused(Exception):
    """A call the gateway answers itself with `status` and a JSON body."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body = body if body is not None else {"error": error}
        self.headers = dict(headers or {})


def error_response(status: int, error: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def on_refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


# Starlette's own refusals (unknown route 404, wrong method 405) in the same JSON shape.
_REASONS = {404: "not found", 405: "method not allowed"}


async def on_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = _REASONS.get(exc.status_code) or str(exc.detail)
    return error_response(exc.status_code, error, exc.headers)


async def on_store_unavailable(_request: Request, _exc: Exception) -> Response:
    status, body, headers = STORE_UNAVAILABLE
    return JSONResponse(body, status_code=status, headers=headers)
