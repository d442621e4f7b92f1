"""Stale heartbeats (CONTRACT §4.2, freshness): evidence older than the liveness TTL.

A heartbeat held back (in the queue or in retries) longer than LIVENESS_TTL_SECONDS
cannot bring back a workspace marked unreachable since, nor refresh its liveness key
past what its age allows; its retries stop once it could no longer count.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    heartbeat_now,
    new_id,
    recorded_events,
    register_now,
    run_message,
    workspace,
)
from sqlalchemy import Engine, text
from test_redelivery import _producer, spare_redis_broker  # noqa: F401 - a fixture
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_QUEUE, HEARTBEAT_TASK
from registry.config import get_settings
from registry.ingestion.heartbeats import STALE_REASON
from registry.liveness.expiry import mark_expired
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration

STALE = {"status": "ignored", "reason": STALE_REASON}


def _expire(engine: Engine, redis_client: redis.Redis, ws: str) -> None:
    """The liveness key expired and the listener marked the workspace unreachable."""
    redis_client.delete(f"ws:{ws}")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour'"),
        )
    with unit_of_work() as uow:
        (changed,) = mark_expired(uow, [uuid.UUID(ws)], get_settings())
    assert changed.new_status in ("offline", "awaiting_agent")


@pytest.mark.parametrize("path", ["message", "batch"])
def test_a_heartbeat_held_back_past_the_ttl_cannot_bring_a_workspace_back(
    db: Engine, worker: Any, celery_app: Celery, redis_client: redis.Redis, path: str
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    # Sent while the workspace was alive, then held back longer than the TTL...
    sent_at = time.time() - get_settings().liveness_ttl_seconds - 5
    # ...meanwhile its key expired and it was marked unreachable.
    _expire(db, redis_client, ws)
    before, events_before = workspace(db, ws), recorded_events(db, ws)
    hb = {"workspace_id": ws, "auth_token": token, "sent_at": sent_at, "current_task": "late"}

    if path == "message":
        assert run_message(celery_app, HEARTBEAT_TASK, hb) == STALE
    else:
        result = run_message(celery_app, HEARTBEAT_BATCH_TASK, {"heartbeats": [hb]})
        assert (result["applied"], result["ignored"]) == (0, 1)

    assert workspace(db, ws) == before  # still offline, nothing written
    assert recorded_events(db, ws) == events_before
    assert redis_client.exists(f"ws:{ws}") == 0  # and no liveness key


def test_an_external_workspace_stays_awaiting_agent(db: Engine, redis_client: redis.Redis) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET runtime = 'external' WHERE id = :id"), {"id": ws})
    _expire(db, redis_client, ws)
    assert workspace(db, ws).status == "awaiting_agent"
    late = time.time() - get_settings().liveness_ttl_seconds - 1
    assert heartbeat_now(ws, token, sent_at=late) == STALE
    assert workspace(db, ws).status == "awaiting_agent"
    # A fresh heartbeat still brings it back.
    assert heartbeat_now(ws, token)["workspace_status"] == "online"


def test_the_key_lives_no_longer_than_the_heartbeat_age_allows(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    ttl = get_settings().liveness_ttl_seconds
    _expire(db, redis_client, ws)

    # Held back for TTL - 30 s: still evidence of life, good for 30 more seconds at most.
    result = heartbeat_now(ws, token, sent_at=time.time() - (ttl - 30))

    assert result == {"status": "ok", "workspace_status": "online"}
    assert 0 < redis_client.ttl(f"ws:{ws}") <= 30
    # A fresh one gets the full TTL again.
    heartbeat_now(ws, token, sent_at=time.time())
    assert redis_client.ttl(f"ws:{ws}") > ttl - 5


def test_the_age_is_judged_by_the_database_clock(db: Engine, redis_client: redis.Redis) -> None:
    """sent_at just inside the TTL by the database's clock applies; just outside does not."""
    ws = new_id()
    token = register_now(ws)["auth_token"]
    ttl = get_settings().liveness_ttl_seconds
    with db.connect() as conn:
        db_now = conn.execute(text("SELECT extract(epoch FROM now())")).scalar_one()
    assert heartbeat_now(ws, token, sent_at=float(db_now) - ttl - 2) == STALE
    assert heartbeat_now(ws, token, sent_at=float(db_now) - ttl + 20)["status"] == "ok"


def test_retries_stop_once_the_heartbeat_could_no_longer_count(
    db: Engine,
    spare_redis_broker: str,  # noqa: F811 - the fixture imported above
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A worker whose database is unreachable retries a heartbeat only while it can count."""
    ws = new_id()
    env = process_env(
        test_env,
        CELERY_BROKER_URL=spare_redis_broker,
        # Nothing listens there: every attempt fails the way an outage does.
        DATABASE_URL="postgresql+psycopg2://postgres@127.0.0.1:1/unreachable",
        LIVENESS_TTL_SECONDS="20",
    )
    producer = _producer(spare_redis_broker)
    argv = celery_worker_argv([HEARTBEAT_QUEUE], pool="threads", concurrency=4)
    try:
        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=tmp_path) as w:
            # Sent 16 s ago: it can count for 4 more seconds.
            payload = {"workspace_id": ws, "sent_at": time.time() - 16}
            producer.send_task(HEARTBEAT_TASK, args=[payload], queue=HEARTBEAT_QUEUE)
            w.wait_for_log(r"waiting for a dependency", timeout=20)
            # Unacknowledged while it is retried.
            with redis.Redis.from_url(spare_redis_broker) as broker:
                assert broker.hlen("unacked") == 1
            w.wait_for_log(r"1 heartbeat\(s\) given up: they could no longer count", timeout=30)
            retries = w.count(r"waiting for a dependency")
            time.sleep(3)
            assert w.count(r"waiting for a dependency") == retries  # none after giving up
            w.wait_for_log(r"Task registry\.heartbeat\[\S+\] succeeded", timeout=10)
    finally:
        producer.close()
    with redis.Redis.from_url(spare_redis_broker) as broker:
        assert broker.llen(HEARTBEAT_QUEUE) == 0
        assert broker.hlen("unacked") == 0
