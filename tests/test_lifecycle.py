"""registry.create_workspace and registry.remove_workspace (CONTRACT §4.4)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    create_now,
    db_snapshot,
    heartbeat_now,
    new_id,
    outbox_size,
    outcome,
    recorded_events,
    redis_snapshot,
    register_now,
    remove_now,
    run_message,
    task_named,
    tokens_of,
    workspace,
)
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine

from molecule_registry_client.names import CREATE_WORKSPACE_TASK, REMOVE_WORKSPACE_TASK
from registry.ingestion.lifecycle import remove_workspace
from registry.ingestion.payloads import RemoveWorkspacePayload, parse_payload
from registry.ingestion.tokens import hash_token
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration


def test_create_a_container_workspace(db: Engine) -> None:
    result = create_now("builder", runtime="hermes", tier=2, hibernation_idle_minutes=30)
    ws = result["workspace_id"]
    token = result.pop("auth_token")
    assert result == {"status": "created", "workspace_id": ws, "workspace_status": "provisioning"}
    row = workspace(db, ws)
    assert (row.name, row.runtime, row.status, row.tier) == ("builder", "hermes", "provisioning", 2)
    assert (row.hibernation_idle_minutes, row.max_concurrent_tasks) == (30, 1)
    assert row.registered_at is None
    # Issued at creation for every runtime, for the provisioner to inject (CONTRACT §4.4).
    assert [t.token_hash for t in tokens_of(db, ws)] == [hash_token(token)]


def test_create_an_external_workspace_awaits_its_agent_with_a_token(db: Engine) -> None:
    result = create_now("laptop", runtime="external")
    ws = result["workspace_id"]
    assert result["workspace_status"] == "awaiting_agent"
    (token_row,) = tokens_of(db, ws)
    assert token_row.token_hash == hash_token(result["auth_token"])
    assert recorded_events(db, ws) == [
        (
            "WORKSPACE_AWAITING_AGENT",
            {"name": "laptop", "runtime": "external", "reason": "created"},
        )
    ]
    # The agent connects with that token (poll mode, no URL needed).
    registered = register_now(ws, delivery_mode="", auth_token=result["auth_token"])
    assert registered["delivery_mode"] == "poll"
    assert "auth_token" not in registered
    assert workspace(db, ws).status == "online"


def test_the_parent_must_exist(db: Engine, redis_client: redis.Redis) -> None:
    parent = create_now("parent")["workspace_id"]
    child = create_now("child", parent_id=parent)
    assert workspace(db, child["workspace_id"]).parent_id == uuid.UUID(parent)

    gone = create_now("gone")["workspace_id"]
    remove_now(gone)
    before = (db_snapshot(db), redis_snapshot(redis_client))
    for missing in (new_id(), gone):
        refused = outcome(lambda missing=missing: create_now("orphan", parent_id=missing))
        assert refused == {"status": "rejected", "error": "parent_id: unknown workspace"}
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before


def test_an_explicit_id_that_is_taken_is_refused(db: Engine) -> None:
    ws = create_now("first")["workspace_id"]
    refused = outcome(lambda: create_now("second", id=ws))
    assert refused == {"status": "rejected", "error": f"id: workspace {ws} already exists"}
    assert workspace(db, ws).name == "first"


@pytest.mark.parametrize("explicit_id", [False, True], ids=["derived id", "explicit id"])
def test_a_redelivered_create_makes_one_workspace_with_one_token(
    db: Engine, celery_app: Celery, explicit_id: bool
) -> None:
    # The sender's own secret proves a re-sent copy is its own (CONTRACT §4.1 step 7).
    payload: dict[str, Any] = {"name": "laptop", "runtime": "external", "request_secret": "k"}
    if explicit_id:
        payload["id"] = new_id()
    task = task_named(celery_app, CREATE_WORKSPACE_TASK)
    task_id = str(uuid.uuid4())

    first = task.apply(args=[payload], task_id=task_id).get()
    again = task.apply(args=[payload], task_id=task_id).get()

    assert first == again  # same workspace, same token, same answer
    ws = first["workspace_id"]
    assert len(tokens_of(db, ws)) == 1
    assert len(recorded_events(db, ws)) == 1
    # A different message creating the same name makes a different workspace.
    if not explicit_id:
        other = task.apply(args=[payload], task_id=str(uuid.uuid4())).get()
        assert other["workspace_id"] != ws


def test_remove_revokes_tokens_clears_keys_and_records_once(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws, url="http://localhost:8000", delivery_mode="push")["auth_token"]
    heartbeat_now(ws, token, active_tasks=1)
    keys = [f"ws:{ws}", f"ws:{ws}:url", f"ws:{ws}:internal_url"]
    assert all(redis_client.exists(k) for k in keys)

    assert remove_now(ws) == {"status": "removed", "workspace_id": ws}

    assert workspace(db, ws).status == "removed"
    assert all(t.revoked_at is not None for t in tokens_of(db, ws))
    assert not any(redis_client.exists(k) for k in keys)
    assert recorded_events(db, ws)[-1] == ("WORKSPACE_REMOVED", {"previous_status": "online"})

    before = (db_snapshot(db), redis_snapshot(redis_client))
    assert remove_now(ws) == {"status": "removed", "workspace_id": ws}  # again: no new event
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before
    # The revoked token opens nothing.
    assert heartbeat_now(ws, token)["status"] == "ignored"


def test_removing_an_unknown_workspace_is_rejected(db: Engine) -> None:
    assert outcome(lambda: remove_now(new_id())) == {
        "status": "rejected",
        "error": "workspace_id: unknown workspace",
    }


def test_create_and_remove_messages(db: Engine, worker: Any, celery_app: Celery) -> None:
    created = run_message(celery_app, CREATE_WORKSPACE_TASK, {"name": "m", "runtime": "external"})
    assert created["status"] == "created" and created["workspace_status"] == "awaiting_agent"
    ws = created["workspace_id"]
    assert tokens_of(db, ws)[0].token_hash == hash_token(created["auth_token"])

    removal = {"workspace_id": ws}
    assert run_message(celery_app, REMOVE_WORKSPACE_TASK, removal)["status"] == "removed"
    assert run_message(celery_app, REMOVE_WORKSPACE_TASK, removal)["status"] == "removed"
    assert [kind for kind, _ in recorded_events(db, ws)] == [
        "WORKSPACE_AWAITING_AGENT",
        "WORKSPACE_REMOVED",
    ]


def test_a_removal_retried_after_redis_failed_still_clears_the_keys(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    register_now(ws, url="http://localhost:8000", delivery_mode="push")
    payload = parse_payload(RemoveWorkspacePayload, {"workspace_id": ws})
    unreachable = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))

    # Committed, then Redis is unreachable: the task fails with a transient error.
    with pytest.raises(redis.ConnectionError), unit_of_work(client=unreachable) as uow:
        remove_workspace(uow, payload)
    assert workspace(db, ws).status == "removed"
    assert redis_client.exists(f"ws:{ws}", f"ws:{ws}:url") == 2

    # The retry (same message) finishes the job without a second event.
    assert remove_now(ws)["status"] == "removed"
    assert redis_client.exists(f"ws:{ws}", f"ws:{ws}:url", f"ws:{ws}:internal_url") == 0
    assert [kind for kind, _ in recorded_events(db, ws)] == [
        "WORKSPACE_ONLINE",
        "WORKSPACE_REMOVED",
    ]
    assert outbox_size(db) == 1  # the unpublished removal event waits for the relay
