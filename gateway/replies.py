"""Reading a worker's answer (a registration's token) from the result backend.

The answer is read once and then removed from the backend (`forget`), so the token in
it reaches only the caller whose HTTP request is waiting for it. With the gateway in
front, agents need no broker or result-backend access at all.

The backend is polled rather than subscribed to: Celery's pub/sub result consumer is
not thread-safe, and a poll every few milliseconds (backing off) is nothing next to a
registration. Each poll runs in the thread pool with a backend of that thread's own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

FIRST_POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.1


class WorkerFailed(Exception):
    """The task failed in the worker (after its own retries)."""


class Replies:
    def __init__(self, result_backend_url: str) -> None:
        from celery import Celery

        self.url = result_backend_url
        self._app = Celery(
            "molecule-gateway",
            set_as_current=False,
            config_source={
                "result_accept_content": ["json"],
                "result_serializer": "json",
                "redis_socket_connect_timeout": 5,
                "redis_socket_timeout": 5,
                "redis_retry_on_timeout": False,
            },
        )
        self._local = threading.local()

    def _backend(self) -> Any:
        backend = getattr(self._local, "backend", None)
        if backend is None:
            from celery.app.backends import by_url

            backend_cls, url = by_url(self.url, self._app.loader)
            # One per thread: backends hold connections that are not shared across threads.
            backend = self._local.backend = backend_cls(app=self._app, url=url)
        return backend

    def _poll(self, task_id: str) -> dict[str, Any] | None:
        meta = self._backend().get_task_meta(task_id)
        state = meta.get("status")
        if state not in ("SUCCESS", "FAILURE", "REVOKED"):
            return None
        self._backend().forget(task_id)  # read once: the token reaches only its caller
        if state != "SUCCESS" or not isinstance(meta.get("result"), dict):
            raise WorkerFailed(f"the worker did not complete it ({state})")
        return dict(meta["result"])

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The task's result dict; None if none arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        delay = FIRST_POLL_SECONDS
        while True:
            result = await run_in_threadpool(self._poll, task_id)
            if result is not None:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, MAX_POLL_SECONDS)

    def close(self) -> None:
        self._app.close()
