"""registry.heartbeat_batch (CONTRACT §4.2a): every §4.2 rule, item by item, in one message."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    db_snapshot,
    insert_workspace,
    new_id,
    recorded_events,
    redis_snapshot,
    register_now,
    remove_now,
    run_message,
    set_status,
    task_named,
    workspace,
)
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text
from test_heartbeats import ORDERINGS, ROWS, Pair, sent_pair

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, MAX_HEARTBEAT_BATCH, queue_for
from registry.config import get_settings
from registry.events.outbox import BROADCAST_CHANNEL, Event
from registry.statuses import EventType

pytestmark = pytest.mark.integration


def batch(celery_app: Celery, items: Any) -> dict[str, Any]:
    """Run one heartbeat_batch message in this process (as the worker would)."""
    return task_named(celery_app, HEARTBEAT_BATCH_TASK).apply(args=[items]).get()


def summary(applied: int = 0, ignored: int = 0, rejected: int = 0, unauthorized: int = 0) -> dict:
    return {
        "status": "ok",
        "applied": applied,
        "ignored": ignored,
        "rejected": rejected,
        "unauthorized": unauthorized,
    }


def rejected_count(reason: str) -> float:
    value = REGISTRY.get_sample_value("registry_heartbeats_rejected_total", {"reason": reason})
    return value or 0.0


def test_routed_to_the_heartbeat_queue() -> None:
    assert queue_for(HEARTBEAT_BATCH_TASK) == "registry.heartbeats"


# --- every rule of §4.2, batched -------------------------------------------


def test_the_transition_table_in_one_batch(db: Engine, celery_app: Celery) -> None:
    """Every row of the §4.2 table, one workspace each, all in the same message."""
    cases = []
    for _name, before, registered, fields, after, event in ROWS:
        if registered:
            ws = new_id()
            token = register_now(ws)["auth_token"]
            set_status(db, ws, before)
        else:
            ws, token = insert_workspace(db, status=before, runtime="external"), None
        cases.append((ws, token, fields, after, event, recorded_events(db, ws)))
    items = [
        {"workspace_id": ws, **({"auth_token": token} if token else {}), **fields}
        for ws, token, fields, *_ in cases
    ]

    assert batch(celery_app, {"heartbeats": items}) == summary(applied=len(ROWS))

    for ws, _token, fields, after, event, events_before in cases:
        row = workspace(db, ws)
        assert row.status == after, (fields, after)
        assert recorded_events(db, ws) == events_before + ([event] if event else [])
        assert row.last_error_rate == fields.get("error_rate", 0.0)


@pytest.mark.parametrize(
    ("before", "registered", "fields", "after", "event"),
    [r[1:] for r in ROWS],
    ids=[r[0] for r in ROWS],
)
def test_transition_table_through_a_batch_of_one(
    *,
    db: Engine,
    celery_app: Celery,
    before: str,
    registered: bool,
    fields: dict[str, Any],
    after: str,
    event: tuple[str, dict] | None,
) -> None:
    if registered:
        ws = new_id()
        token = register_now(ws)["auth_token"]
        set_status(db, ws, before)
    else:
        ws, token = insert_workspace(db, status=before, runtime="external"), None
    events_before = recorded_events(db, ws)
    item = {"workspace_id": ws, **({"auth_token": token} if token else {}), **fields}

    assert batch(celery_app, {"heartbeats": [item]}) == summary(applied=1)
    assert workspace(db, ws).status == after
    assert recorded_events(db, ws) == events_before + ([event] if event else [])


@pytest.mark.parametrize("pair", [o[1] for o in ORDERINGS], ids=[o[0] for o in ORDERINGS])
def test_an_older_heartbeat_in_the_same_batch_changes_nothing(
    db: Engine, celery_app: Celery, pair: Pair
) -> None:
    newer, older = sent_pair(pair)
    ws = new_id()
    token = register_now(ws)["auth_token"]
    items = [
        {"workspace_id": ws, "auth_token": token, "sent_at": newer, "current_task": "new"},
        {"workspace_id": ws, "auth_token": token, "sent_at": older, "error_rate": 0.9},
    ]
    assert batch(celery_app, {"heartbeats": items}) == summary(applied=1, ignored=1)
    row = workspace(db, ws)
    assert (row.status, row.current_task, row.last_error_rate) == ("online", "new", 0.0)


def test_the_same_workspace_twice_applies_in_order(db: Engine, celery_app: Celery) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    hb = {"workspace_id": ws, "auth_token": token}
    items = [
        {**hb, "error_rate": 0.9, "sample_error": "boom", "active_tasks": 2, "monthly_spend": 500},
        {**hb, "error_rate": 0.0, "current_task": "b", "monthly_spend": 0},  # 0 keeps 500
        {**hb, "error_rate": 0.0, "current_task": "c", "active_tasks": 0, "uptime_seconds": 9},
    ]

    assert batch(celery_app, {"heartbeats": items}) == summary(applied=3)

    assert [kind for kind, _ in recorded_events(db, ws)][1:] == [
        "WORKSPACE_DEGRADED",
        "WORKSPACE_ONLINE",
    ]
    row = workspace(db, ws)
    assert (row.status, row.current_task, row.uptime_seconds) == ("online", "c", 9)
    assert row.monthly_spend == 500
    assert row.idle_since is not None  # busy, then idle: idle from now


def test_idle_since_is_kept_by_a_batch_of_idle_heartbeats(db: Engine, celery_app: Celery) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    hb = {"workspace_id": ws, "auth_token": token, "active_tasks": 0}
    batch(celery_app, {"heartbeats": [hb]})
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET idle_since = idle_since - interval '1 hour'"))
    aged = workspace(db, ws).idle_since

    batch(celery_app, {"heartbeats": [hb, hb]})
    assert workspace(db, ws).idle_since == aged
    batch(celery_app, {"heartbeats": [{**hb, "active_tasks": 1}, hb]})
    assert workspace(db, ws).idle_since > aged


def test_liveness_keys_are_refreshed_for_every_workspace(
    db: Engine, celery_app: Celery, redis_client: redis.Redis
) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id(), new_id(), new_id())}
    for ws in tokens:
        redis_client.delete(f"ws:{ws}")
    items = [{"workspace_id": ws, "auth_token": t} for ws, t in tokens.items()]
    batch(celery_app, {"heartbeats": items})
    ttl = get_settings().liveness_ttl_seconds
    for ws in tokens:
        assert redis_client.get(f"ws:{ws}") == "online"
        assert ttl - 5 <= redis_client.ttl(f"ws:{ws}") <= ttl


# --- one bad item is refused alone -----------------------------------------


def test_a_mixed_batch_gives_each_item_its_own_outcome(
    db: Engine, celery_app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good, other = new_id(), new_id()
    tokens = {ws: register_now(ws)["auth_token"] for ws in (good, other)}
    set_status(db, good, "offline")
    removed = new_id()
    register_now(removed)
    remove_now(removed)
    held_back = new_id()  # offline; its heartbeat waited longer than the TTL
    tokens[held_back] = register_now(held_back)["auth_token"]
    set_status(db, held_back, "offline")
    stale_sent = time.time() - get_settings().liveness_ttl_seconds - 5
    secret = "tok-" + uuid.uuid4().hex
    items = [
        {"workspace_id": good, "auth_token": tokens[good], "current_task": "ok"},
        {"workspace_id": other, "auth_token": secret, "error_rate": 1.0},  # unauthorized
        {"workspace_id": removed, "auth_token": secret},  # removed: ignored
        {"workspace_id": new_id(), "auth_token": secret},  # unknown: rejected
        {"workspace_id": held_back, "auth_token": tokens[held_back], "sent_at": stale_sent},
        {"workspace_id": other, "auth_token": secret, "error_rate": 7},  # malformed
        "not an object",  # malformed
    ]
    untouched = [other, removed, held_back]
    before = {ws: workspace(db, ws) for ws in untouched}
    keys_before = {ws: redis_client.get(f"ws:{ws}") for ws in untouched}
    events_before = {ws: recorded_events(db, ws) for ws in untouched}
    reasons = ("unauthorized", "removed", "unknown_workspace", "stale", "invalid")
    counted_before = {reason: rejected_count(reason) for reason in reasons}

    with caplog.at_level(logging.WARNING, logger="workers.heartbeat_intake"):
        result = batch(celery_app, {"heartbeats": items})

    assert result == summary(applied=1, ignored=2, rejected=3, unauthorized=1)
    assert workspace(db, good).status == "online"
    assert workspace(db, good).current_task == "ok"
    assert {ws: workspace(db, ws) for ws in untouched} == before
    assert {ws: redis_client.get(f"ws:{ws}") for ws in untouched} == keys_before
    assert {ws: recorded_events(db, ws) for ws in untouched} == events_before
    counted = {reason: rejected_count(reason) - counted_before[reason] for reason in reasons}
    assert counted == {
        "unauthorized": 1,
        "removed": 1,
        "unknown_workspace": 1,
        "stale": 1,
        "invalid": 2,
    }
    assert secret not in caplog.text
    assert "heartbeats[5].error_rate" in caplog.text  # the malformed item, by position


@pytest.mark.parametrize(
    ("envelope", "error"),
    [
        ("not an object", "payload: must be a JSON object, not str"),
        ([{"workspace_id": "x"}], "payload: must be a JSON object, not list"),
        ({}, "heartbeats: is required"),
        ({"heartbeats": {"workspace_id": "x"}}, "heartbeats: must be a list, not dict"),
        ({"heartbeats": []}, "heartbeats: must hold 1 to 1000 items, not 0"),
        (None, "payload: must be a JSON object, not NoneType"),
    ],
    ids=["string", "list", "no heartbeats", "heartbeats not a list", "empty", "null"],
)
def test_a_bad_envelope_is_rejected_whole(
    db: Engine, celery_app: Celery, redis_client: redis.Redis, envelope: Any, error: str
) -> None:
    register_now(new_id())
    before = (db_snapshot(db), redis_snapshot(redis_client))
    assert batch(celery_app, envelope) == {"status": "rejected", "error": error}
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before


def test_more_than_1000_items_are_rejected_whole(
    db: Engine, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    before = (db_snapshot(db), redis_snapshot(redis_client))
    items = [{"workspace_id": ws, "auth_token": token}] * (MAX_HEARTBEAT_BATCH + 1)
    assert batch(celery_app, {"heartbeats": items}) == {
        "status": "rejected",
        "error": "heartbeats: must hold 1 to 1000 items, not 1001",
    }
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before
    full = batch(celery_app, {"heartbeats": items[:MAX_HEARTBEAT_BATCH]})
    assert full == summary(applied=MAX_HEARTBEAT_BATCH)


def test_a_future_sent_at_is_refused_alone(db: Engine, celery_app: Celery) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    items = [
        {"workspace_id": ws, "auth_token": token, "sent_at": ahead, "current_task": "future"},
        {"workspace_id": ws, "auth_token": token, "current_task": "now"},
    ]
    assert batch(celery_app, {"heartbeats": items}) == summary(applied=1, rejected=1)
    assert workspace(db, ws).current_task == "now"


# --- through a real worker ---------------------------------------------------


def test_a_batch_message_through_the_worker(
    db: Engine, worker: Any, celery_app: Celery, redis_client: redis.Redis
) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id(), new_id())}
    for ws in tokens:
        set_status(db, ws, "offline")
    items = [{"workspace_id": ws, "auth_token": t, "current_task": ws} for ws, t in tokens.items()]

    result = run_message(celery_app, HEARTBEAT_BATCH_TASK, {"heartbeats": items})

    assert result == summary(applied=2)
    for ws in tokens:
        row = workspace(db, ws)
        assert (row.status, row.current_task) == ("online", ws)
        assert recorded_events(db, ws)[-1] == ("WORKSPACE_ONLINE", {"recovered_from": "offline"})
        assert redis_client.ttl(f"ws:{ws}") > 0


# Text a hand-built encoding would get wrong: quotes, backslashes, array and JSON
# punctuation, the word NULL, control characters, non-ASCII, a surrogate pair's emoji.
AWKWARD = "say \"hi\" \\ back\\slash, {braces} [] NULL\n\t\u2603 \U0001f600 \u2028 'q'"


def test_awkward_text_reaches_the_row_as_sent(db: Engine, celery_app: Celery) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    metadata = {"capabilities": {AWKWARD: True, "status_mgmt": False}, "idle_timeout_seconds": 30}
    sent = datetime.now(UTC).replace(microsecond=123456)
    item = {
        "workspace_id": ws,
        "auth_token": token,
        "sample_error": AWKWARD,
        "current_task": AWKWARD,
        "runtime_metadata": metadata,
        "sent_at": sent.isoformat(),
    }

    assert batch(celery_app, {"heartbeats": [item]}) == summary(applied=1)

    row = workspace(db, ws)
    assert (row.last_sample_error, row.current_task) == (AWKWARD, AWKWARD)
    assert row.runtime_metadata == metadata
    assert row.last_heartbeat_sent_at == sent


def test_published_heartbeat_events_are_the_event_encoders_text(
    db: Engine, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    pubsub = redis_client.pubsub()
    pubsub.subscribe(BROADCAST_CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    item = {"workspace_id": ws, "auth_token": token, "active_tasks": 3, "uptime_seconds": 77}

    batch(celery_app, {"heartbeats": [item, {**item, "uptime_seconds": 78}]})

    bodies: list[str] = []
    deadline = time.monotonic() + 5
    while len(bodies) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            body = (
                message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
            )
            if ws in body and "WORKSPACE_HEARTBEAT" in body:
                bodies.append(body)
    pubsub.close()
    assert len(bodies) == 2, bodies
    for body, uptime in zip(bodies, (77, 78), strict=True):
        stamp = datetime.fromisoformat(json.loads(body)["timestamp"].replace("Z", "+00:00"))
        payload = {"active_tasks": 3, "uptime_seconds": uptime}
        assert body == Event(EventType.WORKSPACE_HEARTBEAT, ws, payload, stamp).to_json()


def test_a_small_batch_probes_the_primary_key(db: Engine) -> None:
    # The planner cannot count a JSON document's rows; without the LIMIT it assumed 100
    # and scanned a fleet of thousands for every handful of heartbeats.
    from registry.ingestion.heartbeats import _UPDATE_SAME_STATUS

    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, registered_at, last_heartbeat_at) "
                "SELECT id, id::text, 'online', now(), now() "
                "FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 5000)) s"
            )
        )
        ids = conn.execute(text("SELECT id::text FROM workspaces LIMIT 3")).scalars().all()
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE workspaces"))
    rows = [{"id": ws, "expected": "online", "is_busy": False} for ws in ids]
    with db.begin() as conn:
        plan = "\n".join(
            conn.execute(
                text(f"EXPLAIN {_UPDATE_SAME_STATUS.text}"),
                {"rows": json.dumps(rows), "count": len(rows)},
            ).scalars()
        )
    assert "Index Scan using workspaces_pkey" in plan, plan
    assert "Seq Scan on workspaces" not in plan, plan
