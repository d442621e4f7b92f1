"""Events (CONTRACT §7): recorded with their change, published after commit, relayed if lost."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    RECORDER,
    EventTap,
    assert_event_shape,
    new_id,
    outbox_size,
    recorded_events,
    run_message,
    run_sweep,
    stream_events,
)
from sqlalchemy import Engine, text

from molecule_registry_client.names import (
    HEARTBEAT_TASK,
    REGISTER_TASK,
    REMOVE_WORKSPACE_TASK,
    UPDATE_CARD_TASK,
)
from registry.config import get_settings
from registry.events.outbox import Event, insert_recorded_event, relay_unpublished_events
from registry.statuses import EventType
from registry.uow import broadcast_event_on_commit, record_event_on_commit, unit_of_work

pytestmark = pytest.mark.integration

RELAY_TASK = "registry.relay_events"


def test_every_event_reaches_the_table_the_channel_and_the_stream(
    db: Engine, worker: Any, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ws = new_id()
    with EventTap(redis_client, [ws]) as tap:
        registration = {"id": ws, "agent_card": {"v": 1}, "delivery_mode": "poll"}
        token = run_message(celery_app, REGISTER_TASK, registration)["auth_token"]
        hb = {"workspace_id": ws, "auth_token": token}
        run_message(celery_app, HEARTBEAT_TASK, {**hb, "current_task": "a", "active_tasks": 1})
        run_message(celery_app, HEARTBEAT_TASK, {**hb, "current_task": "a", "active_tasks": 1})
        run_message(celery_app, HEARTBEAT_TASK, {**hb, "error_rate": 0.9, "uptime_seconds": 9})
        card = {"workspace_id": ws, "agent_card": {"v": 2}, "auth_token": token}
        run_message(celery_app, UPDATE_CARD_TASK, card)
        run_message(celery_app, REMOVE_WORKSPACE_TASK, {"workspace_id": ws})
        published = tap.wait_for(9)
        tap.drain()

    assert [e["event"] for e in published] == [
        "WORKSPACE_ONLINE",
        "TASK_UPDATED",  # current_task None -> "a"
        "WORKSPACE_HEARTBEAT",
        "WORKSPACE_HEARTBEAT",  # "a" again: no TASK_UPDATED
        "WORKSPACE_DEGRADED",
        "TASK_UPDATED",  # "a" -> none
        "WORKSPACE_HEARTBEAT",
        "AGENT_CARD_UPDATED",
        "WORKSPACE_REMOVED",
    ]
    assert all(e["workspace_id"] == ws for e in published)

    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT id, event_type, payload FROM structure_events ORDER BY id")
        ).all()
    recorded = [e for e in published if e["event"] not in ("TASK_UPDATED", "WORKSPACE_HEARTBEAT")]
    # The stream holds exactly the recorded events; broadcast-only ones went to the
    # channel alone (CONTRACT §7).
    assert stream_events(redis_client) == recorded
    assert [(r.id, r.event_type, r.payload) for r in rows] == [
        (e["event_id"], e["event"], e["payload"]) for e in recorded
    ]
    for event in published:
        assert_event_shape(event, recorded=event in recorded)
    assert outbox_size(db) == 0  # every recorded event was confirmed published

    # The registration fills the card's name and description from the row (§12).
    stored = {"v": 1, "name": ws, "description": ws}
    assert published[0]["payload"] == {"url": "", "agent_card": stored, "delivery_mode": "poll"}
    assert published[1]["payload"] == {"current_task": "a", "active_tasks": 1}
    assert published[2]["payload"] == {"active_tasks": 1, "uptime_seconds": 0}
    assert published[4]["payload"] == {"error_rate": 0.9, "sample_error": None}
    assert published[5]["payload"] == {"current_task": "", "active_tasks": 0}
    assert published[6]["payload"] == {"active_tasks": 0, "uptime_seconds": 9}
    assert published[7]["payload"] == {"agent_card": {"v": 2}}
    assert published[8]["payload"] == {"previous_status": "degraded"}


def test_nothing_is_published_or_recorded_when_the_transaction_rolls_back(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = uuid.uuid4()
    with EventTap(redis_client, [ws]) as tap:
        with pytest.raises(RuntimeError), unit_of_work() as uow:
            record_event_on_commit(uow, EventType.WORKSPACE_ONLINE, ws, {})
            broadcast_event_on_commit(uow, EventType.WORKSPACE_HEARTBEAT, ws, {})
            raise RuntimeError("the change failed after the event was queued")
        assert tap.drain() == []
    assert recorded_events(db) == []
    assert outbox_size(db) == 0
    assert redis_client.xlen("events:stream") == 0


def test_broadcast_only_events_are_never_recorded(db: Engine) -> None:
    with db.begin() as conn:
        for kind in (EventType.TASK_UPDATED, EventType.WORKSPACE_HEARTBEAT):
            with pytest.raises(ValueError, match="broadcast-only"):
                insert_recorded_event(conn, kind, uuid.uuid4(), {})
    with pytest.raises(ValueError, match="must be recorded"), unit_of_work() as uow:
        broadcast_event_on_commit(uow, EventType.WORKSPACE_OFFLINE, uuid.uuid4(), {})


# --- the outbox relay ------------------------------------------------------------


def _events_a_dead_worker_left(
    engine: Engine, count: int, *, age_seconds: int = 3600
) -> list[Event]:
    """Recorded and committed, never published: the worker died between the two."""
    with engine.begin() as conn:
        events = [
            insert_recorded_event(
                conn, EventType.WORKSPACE_OFFLINE, uuid.uuid4(), {"reason": "test", "n": n}
            )
            for n in range(count)
        ]
        conn.execute(
            text("UPDATE event_outbox SET created_at = now() - make_interval(secs => :age)"),
            {"age": age_seconds},
        )
    return events


def test_the_relay_publishes_what_a_dead_worker_left_exactly_once(
    db: Engine, worker: Any, celery_app: Celery, redis_client: redis.Redis
) -> None:
    (left,) = _events_a_dead_worker_left(db, 1)
    with EventTap(redis_client, [left.workspace_id]) as tap:
        assert run_sweep(celery_app, RELAY_TASK) == {"status": "ok", "changed": 1}
        assert run_sweep(celery_app, RELAY_TASK) == {"status": "ok", "changed": 0}
        published = tap.drain()

    assert [e["event_id"] for e in published] == [left.event_id]
    assert stream_events(redis_client) == published
    assert_event_shape(published[0], recorded=True)
    assert published[0]["event"] == "WORKSPACE_OFFLINE"
    assert published[0]["payload"] == {"reason": "test", "n": 0}
    assert outbox_size(db) == 0


def test_the_relay_leaves_fresh_events_to_their_own_publisher(
    db: Engine, redis_client: redis.Redis
) -> None:
    grace = get_settings().relay_grace_seconds
    _events_a_dead_worker_left(db, 2, age_seconds=max(grace - 5, 0))
    with db.begin() as conn:
        relayed = relay_unpublished_events(
            conn, redis_client, grace_seconds=grace, stream_maxlen=1000
        )
    assert relayed == 0
    assert outbox_size(db) == 2
    assert redis_client.xlen("events:stream") == 0


def test_two_relays_at_once_publish_each_event_once(db: Engine, redis_client: redis.Redis) -> None:
    ids = [e.event_id for e in _events_a_dead_worker_left(db, 5)]
    grace = get_settings().relay_grace_seconds
    with db.connect() as first, db.connect() as second:
        with first.begin():
            # The first relay has claimed, published and deleted, but not yet committed.
            assert (
                relay_unpublished_events(
                    first, redis_client, grace_seconds=grace, stream_maxlen=1000
                )
                == 5
            )
            with second.begin():
                assert (
                    relay_unpublished_events(
                        second, redis_client, grace_seconds=grace, stream_maxlen=1000
                    )
                    == 0
                )
        with second.begin():
            assert (
                relay_unpublished_events(
                    second, redis_client, grace_seconds=grace, stream_maxlen=1000
                )
                == 0
            )
    assert [e["event_id"] for e in stream_events(redis_client)] == ids
    assert outbox_size(db) == 0


def test_two_relay_messages_at_once_publish_each_event_once(
    db: Engine, worker: Any, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ids = [e.event_id for e in _events_a_dead_worker_left(db, 200)]
    barrier = threading.Barrier(2)
    sent: list[str] = []

    def send_relay() -> None:
        barrier.wait()
        sent.append(celery_app.send_task(RELAY_TASK, queue="registry.sweeps").id)

    threads = [threading.Thread(target=send_relay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    changed = [RECORDER.assert_ran_once(task_id).retval["changed"] for task_id in sent]
    assert sum(changed) == len(ids)
    published = sorted(e["event_id"] for e in stream_events(redis_client))
    assert published == ids
    assert outbox_size(db) == 0
