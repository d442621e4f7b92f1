"""registry.heartbeat (CONTRACT §4.2) against real PostgreSQL and Redis."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    create_now,
    db_snapshot,
    heartbeat_now,
    insert_workspace,
    new_id,
    recorded_events,
    redis_snapshot,
    register_now,
    remove_now,
    run_message,
    set_status,
    task_named,
    tokens_of,
    workspace,
)
from sqlalchemy import Engine, text

from molecule_registry_client.names import HEARTBEAT_TASK
from registry.config import get_settings
from registry.ingestion.heartbeats import apply_heartbeats
from registry.ingestion.payloads import MAX_SPEND_CENTS, TEXT_CAP, HeartbeatPayload, parse_payload
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration

MGMT = {"capabilities": {"status_mgmt": True}}

# (case, status before, registered before, heartbeat fields, status after, recorded event)
ROWS: list[tuple[str, str, bool, dict[str, Any], str, tuple[str, dict] | None]] = [
    ("online wedged", "online", True, {"runtime_state": "wedged", "sample_error": "stuck"},
     "degraded", ("WORKSPACE_DEGRADED", {"runtime_state": "wedged", "sample_error": "stuck"})),
    ("online error rate 0.5", "online", True, {"error_rate": 0.5, "sample_error": "oops"},
     "degraded", ("WORKSPACE_DEGRADED", {"error_rate": 0.5, "sample_error": "oops"})),
    ("online erroring with native status management", "online", True,
     {"error_rate": 0.9, "runtime_metadata": MGMT}, "online", None),
    ("online wedged and erroring: one transition", "online", True,
     {"runtime_state": "wedged", "error_rate": 0.9, "sample_error": "both"},
     "degraded", ("WORKSPACE_DEGRADED", {"runtime_state": "wedged", "sample_error": "both"})),
    ("online healthy", "online", True, {"error_rate": 0.2}, "online", None),
    ("degraded recovered", "degraded", True, {"error_rate": 0.05},
     "online", ("WORKSPACE_ONLINE", {"recovered_from": "degraded"})),
    ("degraded with native status management", "degraded", True,
     {"error_rate": 0.0, "runtime_metadata": MGMT}, "degraded", None),
    ("degraded still wedged", "degraded", True, {"runtime_state": "wedged"}, "degraded", None),
    ("degraded error rate 0.1", "degraded", True, {"error_rate": 0.1}, "degraded", None),
    ("offline", "offline", True, {"error_rate": 0.9},
     "online", ("WORKSPACE_ONLINE", {"recovered_from": "offline"})),
    ("provisioning", "provisioning", False, {},
     "online", ("WORKSPACE_ONLINE", {"recovered_from": "provisioning"})),
    ("awaiting_agent registered before", "awaiting_agent", True, {},
     "online", ("WORKSPACE_ONLINE", {"recovered_from": "awaiting_agent"})),
    # CONTRACT §12: unconditional now (the original's newest registry).
    ("awaiting_agent never registered", "awaiting_agent", False, {},
     "online", ("WORKSPACE_ONLINE", {"recovered_from": "awaiting_agent"})),
    ("paused", "paused", True, {"error_rate": 0.9}, "paused", None),
    ("hibernated", "hibernated", True, {}, "hibernated", None),
    ("failed", "failed", False, {},
     "online", ("WORKSPACE_ONLINE", {"recovered_from": "failed"})),
]  # fmt: skip


@pytest.mark.parametrize(
    ("before", "registered", "fields", "after", "event"),
    [r[1:] for r in ROWS],
    ids=[r[0] for r in ROWS],
)
def test_transition_table_on_postgres(
    *,
    db: Engine,
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

    result = heartbeat_now(ws, token, **fields)

    assert result == {"status": "ok", "workspace_status": after}
    assert workspace(db, ws).status == after
    assert recorded_events(db, ws) == events_before + ([event] if event else [])
    assert workspace(db, ws).last_error_rate == fields.get("error_rate", 0.0)


def test_heartbeat_writes_every_reported_field(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET last_heartbeat_at = now() - interval '5 minutes'"))
    metadata = {"capabilities": {"status_mgmt": False, "a2a": True}, "idle_timeout_seconds": 60}

    heartbeat_now(
        ws,
        token,
        error_rate=0.25,
        sample_error="x" * (TEXT_CAP + 100),
        active_tasks=3,
        uptime_seconds=1234,
        current_task="summarise",
        monthly_spend=4200,
        runtime_metadata=metadata,
    )

    row = workspace(db, ws)
    assert (row.last_error_rate, row.active_tasks, row.uptime_seconds) == (0.25, 3, 1234)
    assert row.last_sample_error == "x" * TEXT_CAP  # capped, not rejected
    assert (row.current_task, row.monthly_spend) == ("summarise", 4200)
    assert row.runtime_metadata["capabilities"] == {"status_mgmt": False, "a2a": True}
    assert row.runtime_metadata["idle_timeout_seconds"] == 60
    with db.connect() as conn:
        age = conn.execute(
            text("SELECT now() - last_heartbeat_at FROM workspaces WHERE id = :id"), {"id": ws}
        ).scalar_one()
    assert age < timedelta(seconds=5)  # set from the database clock
    assert tokens_of(db, ws)[0].last_used_at is not None


def test_token_last_used_at_is_refreshed_at_most_once_a_minute(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    heartbeat_now(ws, token)
    first = tokens_of(db, ws)[0].last_used_at
    heartbeat_now(ws, token)
    assert tokens_of(db, ws)[0].last_used_at == first  # fresh: no write to the tokens table

    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspace_auth_tokens SET last_used_at = now() - interval '2 minutes' "
                "WHERE workspace_id = :id"
            ),
            {"id": ws},
        )
    heartbeat_now(ws, token)
    with db.connect() as conn:
        age = conn.execute(
            text("SELECT now() - last_used_at FROM workspace_auth_tokens WHERE workspace_id = :id"),
            {"id": ws},
        ).scalar_one()
    assert age < timedelta(seconds=5)


def test_runtime_metadata_absent_clears_it(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    heartbeat_now(ws, token, runtime_metadata=MGMT)
    assert workspace(db, ws).runtime_metadata is not None
    heartbeat_now(ws, token)
    assert workspace(db, ws).runtime_metadata is None


@pytest.mark.parametrize(
    ("reported", "stored"),
    [(0, 500), (-7, 500), (900, 900), (10**15, MAX_SPEND_CENTS)],
    ids=["zero keeps", "negative clamps to zero and keeps", "positive updates", "huge clamps"],
)
def test_monthly_spend(db: Engine, reported: int, stored: int) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    heartbeat_now(ws, token, monthly_spend=500)
    heartbeat_now(ws, token, monthly_spend=reported)
    assert workspace(db, ws).monthly_spend == stored


def test_idle_since_tracks_when_the_workspace_became_idle(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]

    heartbeat_now(ws, token, active_tasks=2)
    assert workspace(db, ws).idle_since is None
    heartbeat_now(ws, token, active_tasks=0)
    first_idle = workspace(db, ws).idle_since
    assert first_idle is not None
    with db.begin() as conn:  # 40 minutes pass, still idle
        conn.execute(text("UPDATE workspaces SET idle_since = idle_since - interval '40 minutes'"))
    aged = workspace(db, ws).idle_since
    heartbeat_now(ws, token, active_tasks=0)
    assert workspace(db, ws).idle_since == aged  # a fresh idle heartbeat does not reset it
    heartbeat_now(ws, token, active_tasks=1)
    assert workspace(db, ws).idle_since is None
    heartbeat_now(ws, token, active_tasks=0)
    assert workspace(db, ws).idle_since > aged


def test_the_liveness_key_is_refreshed_and_recreated(db: Engine, redis_client: redis.Redis) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    key, ttl = f"ws:{ws}", get_settings().liveness_ttl_seconds

    redis_client.expire(key, 3)
    heartbeat_now(ws, token)
    assert ttl - 5 <= redis_client.ttl(key) <= ttl

    redis_client.delete(key)  # e.g. Redis restarted without persistence
    heartbeat_now(ws, token)
    assert redis_client.get(key) == "online"
    assert ttl - 5 <= redis_client.ttl(key) <= ttl


# --- ordering: an older heartbeat never rolls state back -----------------------

# (newer, older) from the time the test runs: a `newer` older than the liveness TTL
# would be stale (CONTRACT §4.2, freshness) and ignored for that reason instead.
Pair = Callable[[datetime], tuple[Any, Any]]
ORDERINGS: list[tuple[str, Pair]] = [
    ("RFC 3339 then older RFC 3339",
     lambda now: (now.isoformat(), (now - timedelta(seconds=30)).isoformat())),
    ("epoch then older epoch", lambda now: (now.timestamp(), now.timestamp() - 30)),
    ("epoch then older RFC 3339", lambda now: (now.timestamp(), "2020-01-01T00:00:00Z")),
    ("RFC 3339 then older epoch",
     lambda now: (now.isoformat().replace("+00:00", "Z"), now.timestamp() - 0.5)),
]  # fmt: skip


def sent_pair(pair: Pair) -> tuple[Any, Any]:
    return pair(datetime.now(UTC).replace(microsecond=0))


@pytest.mark.parametrize("pair", [o[1] for o in ORDERINGS], ids=[o[0] for o in ORDERINGS])
def test_an_older_heartbeat_changes_nothing(
    db: Engine, redis_client: redis.Redis, pair: Pair
) -> None:
    newer, older = sent_pair(pair)
    ws = new_id()
    token = register_now(ws)["auth_token"]
    heartbeat_now(ws, token, sent_at=newer, active_tasks=1, current_task="new", monthly_spend=7)
    before = (db_snapshot(db), redis_snapshot(redis_client))

    result = heartbeat_now(
        ws, token, sent_at=older, error_rate=0.9, active_tasks=0, current_task="old"
    )

    assert result == {
        "status": "ignored",
        "reason": "older than the last heartbeat applied (sent_at)",
    }
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before
    assert workspace(db, ws).status == "online"


def test_the_same_or_a_newer_sent_at_applies(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    sent = time.time() - 60
    heartbeat_now(ws, token, sent_at=sent, current_task="a")
    assert heartbeat_now(ws, token, sent_at=sent, current_task="b")["status"] == "ok"  # redelivery
    assert heartbeat_now(ws, token, sent_at=sent + 1, current_task="c")["status"] == "ok"
    assert heartbeat_now(ws, token, current_task="d")["status"] == "ok"  # no sent_at: applies
    row = workspace(db, ws)
    assert row.current_task == "d"
    assert row.last_heartbeat_sent_at == datetime.fromtimestamp(sent + 1, UTC)


# --- refusals ----------------------------------------------------------------


def test_unknown_unauthorized_and_removed_heartbeats_write_nothing(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    gone = new_id()
    register_now(gone)
    remove_now(gone)
    before = (db_snapshot(db), redis_snapshot(redis_client))

    assert heartbeat_now(new_id(), token) == {
        "status": "rejected",
        "error": "workspace_id: unknown workspace",
    }
    for presented in (None, "wrong", token + "x"):
        refused = heartbeat_now(ws, presented, error_rate=1.0)
        assert refused == {
            "status": "unauthorized",
            "error": "auth_token: missing or not valid for this workspace",
        }
    assert heartbeat_now(gone, None, error_rate=1.0)["status"] == "ignored"
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before


def test_a_provisioned_workspace_heartbeats_with_the_token_it_was_created_with(
    db: Engine,
) -> None:
    created = create_now("box")  # the provisioner injects created["auth_token"]
    ws = created["workspace_id"]
    assert heartbeat_now(ws)["status"] == "unauthorized"
    assert heartbeat_now(ws, created["auth_token"])["workspace_status"] == "online"


def test_a_workspace_without_a_live_token_may_heartbeat(db: Engine) -> None:
    ws = insert_workspace(db, status="provisioning")  # written by another service
    assert heartbeat_now(ws)["workspace_status"] == "online"


# --- through a real worker -----------------------------------------------------


def test_heartbeat_message_applies_and_transitions(
    db: Engine, worker: Any, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    redis_client.delete(f"ws:{ws}")

    result = run_message(
        celery_app,
        HEARTBEAT_TASK,
        {"workspace_id": ws, "auth_token": token, "error_rate": 0.75, "sample_error": "503s"},
    )

    assert result == {"status": "ok", "workspace_status": "degraded"}
    assert recorded_events(db, ws)[-1] == (
        "WORKSPACE_DEGRADED",
        {"error_rate": 0.75, "sample_error": "503s"},
    )
    assert redis_client.ttl(f"ws:{ws}") > 0


def test_a_python_datetime_sent_at_travels_through_celery(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    # kombu's JSON carries datetimes; a naive one (datetime.utcnow()) used to fail the task.
    ws = new_id()
    token = register_now(ws)["auth_token"]
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=5)
    payload = {"workspace_id": ws, "auth_token": token, "sent_at": naive}
    assert run_message(celery_app, HEARTBEAT_TASK, payload)["status"] == "ok"
    assert workspace(db, ws).last_heartbeat_sent_at == naive.replace(tzinfo=UTC)


def test_a_rejected_heartbeat_is_logged_without_its_token(
    db: Engine, celery_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tok-" + uuid.uuid4().hex
    task = task_named(celery_app, HEARTBEAT_TASK)
    with caplog.at_level(logging.WARNING, logger="registry.ingestion.intake"):
        invalid = task.apply(
            args=[{"workspace_id": new_id(), "auth_token": secret, "error_rate": 7}]
        )
        unknown = task.apply(args=[{"workspace_id": new_id(), "auth_token": secret}])
    assert invalid.get()["status"] == "rejected"
    assert unknown.get()["status"] == "rejected"
    assert len([r for r in caplog.records if r.name == "registry.ingestion.intake"]) == 2
    assert secret not in caplog.text


def test_a_batch_applies_in_order_with_one_result_per_heartbeat(db: Engine) -> None:
    flapping, stale = new_id(), new_id()
    tokens = {ws: register_now(ws)["auth_token"] for ws in (flapping, stale)}
    gone = new_id()
    register_now(gone)
    remove_now(gone)
    now = time.time()
    raw = [
        {"workspace_id": flapping, "auth_token": tokens[flapping], "error_rate": 0.9},
        {"workspace_id": flapping, "auth_token": tokens[flapping], "error_rate": 0.0},
        {"workspace_id": stale, "auth_token": tokens[stale], "sent_at": now, "current_task": "new"},
        {
            "workspace_id": stale,
            "auth_token": tokens[stale],
            "sent_at": now - 5,
            "current_task": "old",
        },
        {"workspace_id": stale, "auth_token": "forged"},
        {"workspace_id": new_id()},
        {"workspace_id": gone},
    ]
    with unit_of_work() as uow:
        results = apply_heartbeats(uow, [parse_payload(HeartbeatPayload, r) for r in raw])

    assert [r["status"] for r in results] == [
        "ok", "ok", "ok", "ignored", "unauthorized", "rejected", "ignored",
    ]  # fmt: skip
    assert [r.get("workspace_status") for r in results[:3]] == ["degraded", "online", "online"]
    assert [kind for kind, _ in recorded_events(db, flapping)][1:] == [
        "WORKSPACE_DEGRADED",
        "WORKSPACE_ONLINE",
    ]
    assert workspace(db, stale).current_task == "new"
