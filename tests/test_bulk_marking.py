"""Marking in bulk (CONTRACT §5): one statement per batch, events only for rows changed.

`mark_unreachable` claims, updates and records a whole batch in one statement; the
batch's events reach the table, the outbox, the channel and the stream; Redis keys
are cleared in one command; transition metrics are counted only after the commit.
"""

from __future__ import annotations

import json

import pytest
from liveness_helpers import (
    add_fleet,
    fresh_liveness_state,
    statuses,
    unreachable_events,
    wait_until,
)
from prometheus_client import REGISTRY
from sqlalchemy import text

from registry.events.outbox import EVENT_STREAM
from registry.liveness.keys import liveness_key, url_key
from registry.sweeps.backstop import mark_stale
from registry.sweeps.health import mark_remote_stale
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


def transitions(old: str, new: str) -> float:
    labels = {"from": old, "to": new}
    return REGISTRY.get_sample_value("registry_transitions_total", labels) or 0.0


def test_a_batch_records_one_event_per_changed_row_and_publishes_them(liveness_db, redis_client):
    stale = add_fleet(liveness_db, 60, heartbeat_age="10 minutes")
    external = add_fleet(liveness_db, 15, runtime="external", heartbeat_age="10 minutes")
    paused = add_fleet(liveness_db, 5, status="paused", heartbeat_age="10 minutes")
    fresh = add_fleet(liveness_db, 10, heartbeat_age="5 seconds")
    for ws in stale + fresh:
        redis_client.set(liveness_key(ws), "online")
        redis_client.set(url_key(ws), "http://agent")
    before = transitions("online", "offline"), transitions("online", "awaiting_agent")

    with unit_of_work() as uow:
        changed = mark_stale(uow, stale_after=210, limit=1000)

    assert len(changed) == 75
    assert {c.workspace_id for c in changed} == set(stale + external)
    marked = statuses(liveness_db, stale + external + paused + fresh)
    assert {marked[ws] for ws in stale} == {"offline"}
    assert {marked[ws] for ws in external} == {"awaiting_agent"}
    assert {marked[ws] for ws in paused} == {"paused"}
    assert {marked[ws] for ws in fresh} == {"online"}

    events = unreachable_events(liveness_db)
    assert sorted(ws for _, ws, _ in events) == sorted(stale + external)
    assert {(t, p["reason"], p["previous_status"]) for t, _, p in events} == {
        ("WORKSPACE_OFFLINE", "liveness_expired", "online"),
        ("WORKSPACE_AWAITING_AGENT", "liveness_expired", "online"),
    }
    with liveness_db.connect() as conn:  # published, so gone from the outbox
        assert conn.execute(text("SELECT count(*) FROM event_outbox")).scalar_one() == 0
    streamed = [json.loads(fields["data"]) for _, fields in redis_client.xrange(EVENT_STREAM)]
    assert sorted(e["workspace_id"] for e in streamed) == sorted(str(ws) for ws in stale + external)
    assert all(isinstance(e["event_id"], int) for e in streamed)
    assert not any(redis_client.exists(liveness_key(ws), url_key(ws)) for ws in stale)
    assert all(redis_client.exists(liveness_key(ws)) for ws in fresh)
    assert transitions("online", "offline") == before[0] + 60
    assert transitions("online", "awaiting_agent") == before[1] + 15


def test_a_batch_stops_at_its_limit_and_the_next_one_continues(liveness_db):
    stale = add_fleet(liveness_db, 30, heartbeat_age="10 minutes")
    with unit_of_work() as uow:
        first = mark_stale(uow, stale_after=210, limit=20)
    with unit_of_work() as uow:
        second = mark_stale(uow, stale_after=210, limit=20)
    assert (len(first), len(second)) == (20, 10)
    assert sorted(c.workspace_id for c in first + second) == sorted(stale)
    assert len(unreachable_events(liveness_db)) == 30


def test_a_rolled_back_batch_changes_records_publishes_and_counts_nothing(
    liveness_db, redis_client
):
    stale = add_fleet(liveness_db, 12, runtime="external", heartbeat_age="10 minutes")
    before = transitions("online", "awaiting_agent")
    with pytest.raises(RuntimeError), unit_of_work() as uow:
        assert len(mark_remote_stale(uow, stale_after=90)) == 12
        raise RuntimeError("the worker died before the commit")
    assert set(statuses(liveness_db, stale).values()) == {"online"}
    assert unreachable_events(liveness_db) == []
    assert redis_client.xlen(EVENT_STREAM) == 0
    assert transitions("online", "awaiting_agent") == before


def test_the_health_task_drains_a_remote_backlog_in_batches(liveness_db, worker, celery_app):
    quiet = add_fleet(liveness_db, 230, runtime="external", heartbeat_age="5 minutes")
    add_fleet(liveness_db, 300, heartbeat_age="5 seconds")  # keeps the share below 0.5
    first = celery_app.send_task("registry.sweep_health", queue="registry.sweeps").get(timeout=30)
    assert first["remote"]["changed"] == 200
    assert first["remote"]["more"] is True
    # The rest follows at once, in a re-queued remote-only run, not one interval later.
    wait_until(
        lambda: set(statuses(liveness_db, quiet).values()) == {"awaiting_agent"},
        timeout=30,
        what="the whole remote backlog marked",
    )
    assert len(unreachable_events(liveness_db)) == 230
