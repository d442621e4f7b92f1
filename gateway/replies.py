"""Reading a worker's answer (a registration's token) from the result backend.

The answer is read once and then removed from the backend (`forget`), so the token in
it reaches only the caller whose HTTP request is waiting for it. With the gateway in
front, agents need no broker or result-backend access at all.

One poller per process serves every waiting call: each tick fetches the answers of all
of them in one round trip (MGET on a key-value backend such as Redis), so a burst of
registrations costs one request to the backend per tick, not one per waiting call.
(Celery's pub/sub result consumer is not used: it is not thread-safe, and a poll every
few milliseconds is nothing next to a registration.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.concurrency import run_in_threadpool

from molecule_registry_client import result_reader_app
from registry.config import get_settings
from registry.redisconn import is_sentinel_url, sentinel_transport_options

POLL_SECONDS = 0.005
READY = ("SUCCESS", "FAILURE", "REVOKED")


class WorkerFailed(Exception):
    """The task failed in the worker (after its own retries), or was revoked."""


class Replies:
    def __init__(self, result_backend_url: str) -> None:
        from celery.app.backends import by_url

        self.url = result_backend_url
        self._app = result_reader_app("molecule-gateway")
        if is_sentinel_url(result_backend_url):  # REDIS_SENTINELS: the master's name
            self._app.conf.result_backend_transport_options = sentinel_transport_options(
                get_settings()
            )
        backend_cls, url = by_url(result_backend_url, self._app.loader)
        # Used by the poller alone, one fetch at a time.
        self._backend: Any = backend_cls(app=self._app, url=url)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The task's result dict; None if none arrived within `timeout` seconds."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = future
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(task_id, None)

    async def _poll(self) -> None:
        while self._waiting:
            ids = list(self._waiting)
            try:
                answers = await run_in_threadpool(self._fetch, ids)
            except Exception as exc:  # the backend is down: every waiting call hears it
                for task_id in ids:
                    self._settle(task_id, exc)
                continue
            for task_id, answer in answers.items():
                self._settle(task_id, answer)
            await asyncio.sleep(POLL_SECONDS)

    def _settle(self, task_id: str, answer: dict[str, Any] | BaseException) -> None:
        future = self._waiting.pop(task_id, None)
        if future is None or future.done():
            return
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)

    def _fetch(self, task_ids: list[str]) -> dict[str, dict[str, Any] | BaseException]:
        """The finished tasks among `task_ids`, each removed from the backend once read."""
        backend = self._backend
        if hasattr(backend, "mget") and hasattr(backend, "get_key_for_task"):
            values = backend.mget([backend.get_key_for_task(t) for t in task_ids])
            metas = {
                t: backend.decode_result(v) for t, v in zip(task_ids, values, strict=True) if v
            }
        else:  # a backend without multi-get: one lookup per waiting call
            metas = {t: backend.get_task_meta(t) for t in task_ids}
        answers: dict[str, dict[str, Any] | BaseException] = {}
        for task_id, meta in metas.items():
            state = meta.get("status")
            if state not in READY:
                continue
            backend.forget(task_id)  # read once: the token reaches only its caller
            result = meta.get("result")
            if state == "SUCCESS" and isinstance(result, dict):
                answers[task_id] = dict(result)
            else:
                answers[task_id] = WorkerFailed(f"the worker did not complete it ({state})")
        return answers

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._app.close()
