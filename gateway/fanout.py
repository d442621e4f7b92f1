"""One reader of the registry's events per gateway process, fanned out to every client.

The reader is the registry's `Subscriber` (stream + database gap filling, dedup,
Redis-restart and backoff handling) in a thread of its own, following from the moment
the gateway starts, with the broadcast channel on. Each batch it reads is handed to the
event loop, which encodes each event's frame once and offers it to every client that
may see it. A thread, not an asyncio reader: the Subscriber is the one tested
implementation of gaps, replays and late commits, and a blocking XREAD in one thread
costs nothing per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from sqlalchemy import Engine, text

from gateway.audience import Audience
from gateway.clients import Client, frame_key
from gateway.frames import event_frame
from gateway.throttle import BroadcastThrottle
from registry import redisconn
from registry.config import get_settings
from registry.events.subscriber import (
    RETRYABLE_ERRORS,
    Position,
    ReceivedEvent,
    Since,
    Subscriber,
)
from registry.events.subscriber.channel import is_broadcast_only
from registry.statuses import EventType

log = logging.getLogger("gateway.websocket")

READ_BLOCK_MS = 1000
# Longer than any agent's peer-set refresh (session.PEERS_REFRESH_SECONDS, jittered).
FRESH_SECONDS = 60.0
# Replays of resuming clients run in threads too; this many at once, the rest wait.
REPLAY_THREADS = 8


def redis_client(url: str) -> redis.Redis:
    """The client the reader and the replays use (the Subscriber expects text replies;
    its blocking reads stay below the socket timeout). REDIS_URL goes through the
    registry's factory, so it follows a Sentinel failover (registry/redisconn.py)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    settings = get_settings()
    if url == settings.redis_url:
        return redisconn.redis_client(settings, **options)
    return redis.Redis.from_url(url, **options)


class Fanout:
    """The shared reader and the set of connected clients (one per gateway process)."""

    def __init__(self, engine: Engine, redis_url: str) -> None:
        self.engine = engine
        self.redis = redis_client(redis_url)
        self.replays = ThreadPoolExecutor(REPLAY_THREADS, thread_name_prefix="gateway-ws-replay")
        self.audience = Audience()
        self.position: str | None = None  # the reader's position, after its last item
        self._reader_redis = redis_client(redis_url)  # its pub/sub connection is its own
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._throttle = BroadcastThrottle(self._throttled)
        self._lock = asyncio.Lock()
        self.closing = asyncio.Event()  # set at shutdown: every session closes (1001)
        # Every workspace id known to exist: an event of any other is a new workspace's,
        # which an agent's cached peer set cannot know about yet.
        self._known: set[str] | None = None
        self._fresh: dict[str, float] = {}  # workspaces first seen lately -> when

    async def start(self, ready_timeout: float = 10.0) -> None:
        """Start reading (idempotent); returns once the reader knows where "now" is,
        or after `ready_timeout` when Redis is unreachable (it keeps trying)."""
        async with self._lock:
            if self._thread is not None:
                return
            self._loop = asyncio.get_running_loop()
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._read, args=(ready,), name="gateway-ws-reader", daemon=True
            )
            self._thread.start()
            await asyncio.to_thread(ready.wait, ready_timeout)

    async def stop(self) -> None:
        self.closing.set()
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        self.replays.shutdown(wait=False, cancel_futures=True)
        for client in (self.redis, self._reader_redis):
            client.close()

    def add(self, client: Client) -> None:
        self.audience.add(client)

    def discard(self, client: Client) -> None:
        self.audience.discard(client)

    # -- the reader thread --------------------------------------------------

    def _read(self, ready: threading.Event) -> None:
        since: Since = "now"
        while not self._stop.is_set():
            subscriber: Subscriber | None = None
            try:
                subscriber = Subscriber(
                    self._reader_redis, self.engine, since=since, broadcast=True
                )
                self._follow(subscriber, ready)
            except Exception:  # a bug, not an outage (the Subscriber absorbs those)
                log.exception("gateway websocket: the event reader failed; it resumes")
                # From the last position delivered: clients lose nothing.
                since = Position.from_token(self.position) if self.position else "now"
                self._stop.wait(1.0)
            finally:
                if subscriber is not None:
                    subscriber.close()

    def _follow(self, subscriber: Subscriber, ready: threading.Event) -> None:
        while not self._stop.is_set():
            if self._known is None:
                with contextlib.suppress(*RETRYABLE_ERRORS):
                    self._known = known_workspaces(self.engine)
            if not ready.is_set():
                # "now" is where new clients start; resolved once Redis answers.
                with contextlib.suppress(*RETRYABLE_ERRORS):
                    subscriber.position  # noqa: B018 - the property resolves it
                    ready.set()
            batch = subscriber.poll_with_positions(READ_BLOCK_MS, self._stop)
            if batch and self._loop is not None:
                self._hand_over(self._loop, batch)

    def _hand_over(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Any, Position]]
    ) -> None:
        """Deliver on the event loop and wait until done: one batch in flight, so a busy
        loop slows the reader (the stream keeps the rest) instead of piling up batches."""
        delivered = threading.Event()

        def deliver() -> None:
            try:
                self._deliver(batch)
            finally:
                delivered.set()

        loop.call_soon_threadsafe(deliver)
        while not delivered.wait(0.5) and not self._stop.is_set():
            pass

    # -- on the event loop --------------------------------------------------

    def _deliver(self, batch: list[tuple[Any, Position]]) -> None:
        for item, position in batch:
            self.position = position.token()
            if not isinstance(item, ReceivedEvent):
                continue  # a gap notice: its recorded events follow, replayed
            try:
                if is_broadcast_only(item.type):
                    self._throttle.offer(item)
                else:
                    self._dispatch(item, self.position)
            except Exception:  # a bug: the rest of the batch must still go out
                log.exception("gateway websocket: could not fan out %s", item.type)

    def _throttled(self, event: ReceivedEvent) -> None:
        self._dispatch(event, self.position or "0-0")

    def _dispatch(self, event: ReceivedEvent, position: str) -> None:
        key, text = frame_key(event), event_frame(event, position)
        frame = (key, text, None)
        audience = self.audience
        for client in audience.canvases:
            client.offer(frame)
        watching = audience.watching(event.workspace_id)
        for client in watching:
            client.offer(frame)
        if self._is_new(event.workspace_id):
            # No agent's peer set knows this workspace yet: each asks before sending.
            for client in audience.agents:
                if client not in watching:
                    client.offer((key, text, event.workspace_id))
        if event.type == EventType.WORKSPACE_REMOVED and event.workspace_id is not None:
            for client in list(watching):  # after they were told
                client.removed(event.workspace_id)

    def _is_new(self, workspace_id: str | None) -> bool:
        """Whether agents' peer sets may not know this workspace yet: first seen less
        than `FRESH_SECONDS` ago (its later events too: an agent's check of the first
        may still be running when the next is fanned out)."""
        known = self._known
        if workspace_id is None or known is None:
            return False
        now = time.monotonic()
        if workspace_id not in known:
            known.add(workspace_id)
            self._fresh[workspace_id] = now
            return True
        first_seen = self._fresh.get(workspace_id)
        if first_seen is None:
            return False
        if now - first_seen < FRESH_SECONDS:
            return True
        del self._fresh[workspace_id]  # every agent's set has been re-read since
        return False


def known_workspaces(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(i) for i in conn.execute(text("SELECT id FROM workspaces")).scalars()}
