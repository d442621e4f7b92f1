"""Reading a worker's answer (a registration's token) from the result backend.

The answer is read once and then removed from the backend (`forget`), so the token in
it reaches only the caller whose HTTP request is waiting for it. With the gateway in
front, agents need no broker or result-backend access at all.

With a Redis result backend the gateway is told when an answer lands: Celery's Redis
backend publishes each result on a channel named after its key as it stores it, so
each waiting call subscribes to its own task's channel (one pub/sub connection per
process; a caller ACL of `scripts/roles.sh redis caller` allows exactly that) and the
answer is read the moment it is published. Polling every few milliseconds instead
cost the gateway a thread hop and a multi-get per tick for as long as any call
waited: a CPU share that grew with the backlog it was meant to serve. A slow poll of
every waiting call stays as the safety net (an answer published before its
subscription, a dropped pub/sub connection), and a backend without channels is
polled every few milliseconds as before. Either way each read fetches the answers of
all the calls it is for in one round trip (MGET on a key-value backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from molecule_registry_client import result_reader_app
from registry.config import get_settings
from registry.redisconn import is_sentinel_url, sentinel_transport_options

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005  # a backend without channels: every waiting call, this often
SAFETY_POLL_SECONDS = 0.25  # with channels: every waiting call, this often
READY = ("SUCCESS", "FAILURE", "REVOKED")


class WorkerFailed(Exception):
    """The task failed in the worker (after its own retries), or was revoked."""


class _Channel:
    """Per-task subscriptions to the Redis backend's result channels on one pub/sub
    connection, and the async client that reads and deletes the answers.
    `landed(task_id, value)` is called with each answer as it is published."""

    def __init__(self, url: str, prefix: bytes, landed: Callable[[str, bytes], None]) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(url)
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._prefix = prefix
        self._landed = landed
        self._lock = asyncio.Lock()  # one connection: (un)subscriptions go one at a time
        self._reader: asyncio.Task[None] | None = None
        self.healthy = True

    async def subscribe(self, task_id: str) -> None:
        if not self.healthy:
            return
        try:
            async with self._lock:
                await self._pubsub.subscribe(self._prefix + task_id.encode())
        except Exception:
            self._broken("subscribe")
            return
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def unsubscribe(self, task_id: str) -> None:
        if not self.healthy:
            return
        try:
            async with self._lock:
                await self._pubsub.unsubscribe(self._prefix + task_id.encode())
        except Exception:
            self._broken("unsubscribe")

    async def _read(self) -> None:
        cut = len(self._prefix)
        try:
            while True:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if message is not None and message.get("type") == "message":
                    task_id = bytes(message["channel"])[cut:].decode()
                    self._landed(task_id, message["data"])
        except asyncio.CancelledError:
            raise
        except Exception:
            self._broken("read")

    def _broken(self, what: str) -> None:
        # From here on the poller polls every few milliseconds, as without channels.
        if self.healthy:
            log.warning("result channel failed (%s); polling the result backend instead", what)
        self.healthy = False

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _channel_for(backend: Any, url: str, landed: Callable[[str, bytes], None]) -> _Channel | None:
    """A result channel when the backend is Celery's plain Redis one, else None."""
    from celery.backends.redis import RedisBackend, SentinelBackend

    if not isinstance(backend, RedisBackend) or isinstance(backend, SentinelBackend):
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    try:
        return _Channel(url, bytes(backend.task_keyprefix), landed)
    except Exception:  # an option redis.asyncio does not take: poll instead
        log.warning("no result channel for this backend URL; polling it instead")
        return None


Answer = dict[str, Any] | BaseException


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
        self._due: set[str] = set()  # waiting calls to look up at once
        self._read: list[str] = []  # answers read from the channel, to delete
        self._wake = asyncio.Event()
        self._channel = _channel_for(self._backend, result_backend_url, self._landed)

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The task's result dict; None if none arrived within `timeout` seconds."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = future
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        if self._channel is not None:
            await self._channel.subscribe(task_id)
            # The answer may have landed before the subscription: look once now.
            self._due.add(task_id)
            self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(task_id, None)
            if self._channel is not None:
                await self._channel.unsubscribe(task_id)

    def _landed(self, task_id: str, value: bytes) -> None:
        """An answer published on its channel: settled now, deleted by the poller."""
        if task_id not in self._waiting:
            return
        answer = self._answer(self._backend.decode_result(value))
        if answer is None:  # not a final state (a retry's): keep waiting
            return
        self._read.append(task_id)
        self._settle(task_id, answer)
        self._wake.set()

    def _interval(self) -> float:
        healthy = self._channel is not None and self._channel.healthy
        return SAFETY_POLL_SECONDS if healthy else POLL_SECONDS

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._interval()
        while self._waiting or self._read:
            # Every waiting call once per interval; in between, those asked for.
            if loop.time() >= next_sweep:
                ids = list(self._waiting)
                next_sweep = loop.time() + self._interval()
            else:
                ids = [task_id for task_id in self._due if task_id in self._waiting]
            read, self._read = self._read, []
            self._due.clear()
            self._wake.clear()
            try:
                answers = await self._fetch(ids, read)
            except Exception as exc:  # the backend is down: every waiting call hears it
                for task_id in ids:
                    self._settle(task_id, exc)
                continue
            for task_id, answer in answers.items():
                self._settle(task_id, answer)
            if self._due or self._read:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_sweep - loop.time()))

    def _settle(self, task_id: str, answer: Answer) -> None:
        future = self._waiting.pop(task_id, None)
        if future is None or future.done():
            return
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)

    @staticmethod
    def _answer(meta: dict[str, Any]) -> Answer | None:
        """A final result as the waiting call hears it; None while not final."""
        state = meta.get("status")
        if state not in READY:
            return None
        result = meta.get("result")
        if state == "SUCCESS" and isinstance(result, dict):
            return dict(result)
        return WorkerFailed(f"the worker did not complete it ({state})")

    async def _fetch(self, task_ids: list[str], read: list[str]) -> dict[str, Answer]:
        """The finished tasks among `task_ids`; they and `read` removed from the backend."""
        if self._channel is None:
            return await run_in_threadpool(self._fetch_blocking, task_ids)
        backend, client = self._backend, self._channel.client
        answers: dict[str, Answer] = {}
        if task_ids:  # Celery's Redis backend: one MGET, then one DEL for all that are read
            values = await client.mget([backend.get_key_for_task(t) for t in task_ids])
            for task_id, value in zip(task_ids, values, strict=True):
                answer = self._answer(backend.decode_result(value)) if value else None
                if answer is not None:
                    answers[task_id] = answer
        done = [*read, *answers]
        if done:  # read once: the token reaches only its caller
            await client.delete(*(backend.get_key_for_task(t) for t in done))
        return answers

    def _fetch_blocking(self, task_ids: list[str]) -> dict[str, Answer]:
        """`_fetch` on a backend without channels (blocking: in a thread)."""
        backend = self._backend
        if not task_ids:
            return {}
        if hasattr(backend, "mget") and hasattr(backend, "get_key_for_task"):
            values = backend.mget([backend.get_key_for_task(t) for t in task_ids])
            metas = {
                t: backend.decode_result(v) for t, v in zip(task_ids, values, strict=True) if v
            }
        else:  # a backend without multi-get: one lookup per waiting call
            metas = {t: backend.get_task_meta(t) for t in task_ids}
        answers: dict[str, Answer] = {}
        for task_id, meta in metas.items():
            answer = self._answer(meta)
            if answer is not None:
                backend.forget(task_id)  # read once: the token reaches only its caller
                answers[task_id] = answer
        return answers

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._app.close()
