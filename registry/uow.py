"""Unit of work: one transaction per message (or batch), side effects after commit.

Domain functions receive a `UnitOfWork`, write through `uow.conn`, and queue what
must happen only once the change is durable: events to publish and Redis key
operations. They never commit. `unit_of_work()` commits, then runs everything queued
in one Redis pipeline, then clears the published events from the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import redis
from sqlalchemy import Connection, Engine

from registry.config import get_settings
from registry.db import get_engine, get_redis
from registry.events.outbox import (
    Event,
    delete_from_outbox,
    insert_recorded_event,
    insert_recorded_events,
    queue_publication,
)
from registry.insight.recording import before_recording
from registry.redisconn import queue_replica_wait, replicated
from registry.statuses import BROADCAST_ONLY_EVENTS, EventType

log = logging.getLogger(__name__)

RedisOp = Callable[["redis.client.Pipeline"], object]


@dataclass
class UnitOfWork:
    conn: Connection
    recorded_events: list[Event] = field(default_factory=list)
    broadcast_events: list[Event] = field(default_factory=list)
    redis_ops: list[RedisOp] = field(default_factory=list)
    after_commit_hooks: list[Callable[[], object]] = field(default_factory=list)

    def on_commit(self, op: RedisOp) -> None:
        """Queue a Redis operation to run after the commit (key writes, deletes)."""
        self.redis_ops.append(op)

    def after_commit(self, hook: Callable[[], object]) -> None:
        """Run `hook` once the transaction committed (metrics: rolled-back work is
        never counted). Hooks run after the Redis pipeline; one failing is logged."""
        self.after_commit_hooks.append(hook)


@contextmanager
def unit_of_work(
    engine: Engine | None = None, client: redis.Redis | None = None
) -> Iterator[UnitOfWork]:
    engine = engine or get_engine()
    with engine.begin() as conn:
        uow = UnitOfWork(conn)
        yield uow
    # Committed. Nothing below may undo the change; a failure here leaves recorded
    # events in the outbox for the relay, and the caller may retry the message
    # (every message is idempotent).
    run_after_commit(uow, engine, client or get_redis())
    for hook in uow.after_commit_hooks:
        try:
            hook()
        except Exception:  # a metric must never fail a committed message
            log.exception("after-commit hook failed")


def run_after_commit(uow: UnitOfWork, engine: Engine, client: redis.Redis) -> None:
    events = uow.recorded_events + uow.broadcast_events
    if not events and not uow.redis_ops:
        return
    pipe = client.pipeline(transaction=False)
    for op in uow.redis_ops:
        op(pipe)
    settings = get_settings()
    queue_publication(pipe, events, settings.events_stream_maxlen)
    published = [e.event_id for e in uow.recorded_events if e.event_id is not None]
    # Behind Sentinel, recorded events leave the outbox once a replica has them too.
    waited = bool(published) and queue_replica_wait(pipe, settings)
    results = pipe.execute()
    if published and not replicated(client, results, waited):
        log.warning(
            "no replica confirmed %d published event(s); the relay republishes them", len(published)
        )
        return
    if published:
        try:
            with engine.begin() as conn:
                # Losing this in a crash only makes the relay publish once more (at least
                # once anyway): no need to wait for the disk.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                delete_from_outbox(conn, published)
        except Exception:  # the relay would only publish them once more
            log.warning("could not clear %d published event(s) from the outbox", len(published))


def record_event_on_commit(
    uow: UnitOfWork, event_type: EventType, workspace_id: UUID | None, payload: dict[str, Any]
) -> Event:
    """Record the event in this transaction; it is published after the commit."""
    # Incident and flapping bookkeeping of a status change, in its transaction (§13).
    extra = before_recording(uow.conn, [(event_type, workspace_id, payload)], verify=True)
    event = insert_recorded_event(uow.conn, event_type, workspace_id, payload)
    uow.recorded_events.append(event)
    if extra:
        uow.recorded_events.extend(insert_recorded_events(uow.conn, extra))
    return event


def record_events_on_commit(
    uow: UnitOfWork, events: list[tuple[EventType, UUID | str | None, dict[str, Any]]]
) -> list[Event]:
    """`record_event_on_commit` for many events in one statement (batched paths)."""
    events = events + before_recording(uow.conn, events)  # §13, after the batch's own
    recorded = insert_recorded_events(uow.conn, events)
    uow.recorded_events.extend(recorded)
    return recorded


def broadcast_event_on_commit(
    uow: UnitOfWork, event_type: EventType, workspace_id: UUID | None, payload: dict[str, Any]
) -> None:
    """Publish (never record) the event after the commit; lost if the process dies."""
    if event_type not in BROADCAST_ONLY_EVENTS:
        raise ValueError(f"{event_type} must be recorded; use record_event_on_commit")
    uow.broadcast_events.append(Event(event_type, workspace_id, payload))
