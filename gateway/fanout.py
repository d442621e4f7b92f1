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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from gateway.audience import Audience
from gateway.clients import Client, Frame, frame_key
from gateway.frames import event_frame
from gateway.peers import talk_set
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
        # Both kept by the reader thread; the loop only reads `_fresh`.
        self._known: set[str] | None = None
        # Workspaces first seen lately -> (when, the workspaces that may see it, or None
        # when that could not be looked up).
        self._fresh: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._pruned_at = 0.0

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
                self._note_new(batch)
                self._hand_over(self._loop, batch)

    def _note_new(self, batch: list[tuple[Any, Position]]) -> None:
        """Find who may see each workspace first seen in `batch` (in this thread, before
        the batch is handed over, so its frames go out in order).

        The relation of CONTRACT §9 is symmetric, so the agents that may see a new
        workspace are the workspaces it may talk to: one query per new workspace,
        where asking each connected agent cost a query per agent (a thousand agents,
        a thousand queries for every workspace that registers).
        """
        known = self._known
        if known is None:
            return
        now = time.monotonic()
        for item, _position in batch:
            workspace_id = getattr(item, "workspace_id", None)
            if workspace_id is None or workspace_id in known:
                continue
            known.add(workspace_id)
            self._fresh[workspace_id] = (now, self._seers(workspace_id))
        if now - self._pruned_at >= 1.0:
            # Bounded memory: every agent's peer set has been re-read since these were new.
            self._pruned_at = now
            expired = [ws for ws, (seen, _s) in self._fresh.items() if now - seen >= FRESH_SECONDS]
            for workspace_id in expired:
                self._fresh.pop(workspace_id, None)

    def _seers(self, workspace_id: str) -> frozenset[str] | None:
        """The workspaces that may see `workspace_id`; None when not looked up (then each
        agent asks before it is sent: slower, the same rule)."""
        if not _is_uuid(workspace_id):
            return frozenset()  # not a workspace id: no one
        if not self.audience.agents:
            return None  # no agent to tell: registrations alone cost no query
        try:
            with self.engine.connect() as conn:
                return talk_set(conn, workspace_id)
        except (*RETRYABLE_ERRORS, SQLAlchemyError):
            return None

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
        fresh = self._fresh.get(event.workspace_id) if event.workspace_id is not None else None
        if fresh is not None:
            # A workspace newer than the agents' peer sets (their refresh re-reads them).
            self._to_new_watchers(event.workspace_id, fresh, watching, (key, text, None))
        if event.type == EventType.WORKSPACE_REMOVED and event.workspace_id is not None:
            for client in list(watching):  # after they were told
                client.removed(event.workspace_id)

    def _to_new_watchers(
        self,
        workspace_id: str,
        fresh: tuple[float, frozenset[str] | None],
        watching: Iterable[Client],
        frame: Frame,
    ) -> None:
        """Offer a new workspace's frame to the agents that may see it but whose peer
        sets predate it, and add it to those sets (later frames follow the index)."""
        already = set(watching)
        audience = self.audience
        first_seen, seers = fresh
        if seers is None:
            # Not looked up: each agent whose peer set was read before the workspace
            # was seen asks before it is sent (a later read knows the workspace).
            for client in audience.agents:
                if client not in already and client.peers_as_of < first_seen:
                    client.offer((frame[0], frame[1], workspace_id))
            return
        for seer in seers:
            for client in list(audience.connected(seer)):
                if client not in already:
                    client.offer(frame)
                    client.peers = client.peers | {workspace_id}


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def known_workspaces(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(i) for i in conn.execute(text("SELECT id FROM workspaces")).scalars()}
