"""Parity with the original's newest registry (CONTRACT §12): registrations and heartbeats.

Real PostgreSQL and Redis; the message-level cases go through a real worker. Test
names carry the original's test names. URLs are public IP literals (or `localhost`),
so the worker's URL guard needs no DNS.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    create_now,
    heartbeat_now,
    insert_workspace,
    new_id,
    recorded_events,
    register_now,
    run_message,
    set_status,
    workspace,
)
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_TASK, REGISTER_TASK
from registry.ingestion.heartbeats import apply_heartbeats
from registry.ingestion.payloads import HeartbeatPayload, parse_payload
from registry.ingestion.registration import keeps_provisioner_url
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration

GOOD_URL = "http://8.8.8.8:8000"
METADATA_URL = "http://169.254.169.254/latest/meta-data/"


def register_msg(celery_app: Celery, ws: str, **fields: Any) -> dict[str, Any]:
    payload = {"id": ws, "agent_card": {"name": "agent"}, **fields}
    return run_message(celery_app, REGISTER_TASK, payload)


def heartbeat_msg(celery_app: Celery, ws: str, **fields: Any) -> dict[str, Any]:
    return run_message(celery_app, HEARTBEAT_TASK, {"workspace_id": ws, **fields})


def failure_age(engine: Engine, ws: str) -> float | None:
    """Seconds since last_register_failure_at, on the database clock (None: not set)."""
    with engine.connect() as conn:
        age = conn.execute(
            text(
                "SELECT extract(epoch FROM now() - last_register_failure_at) "
                "FROM workspaces WHERE id = :id"
            ),
            {"id": ws},
        ).scalar_one()
    return None if age is None else float(age)


def age_failure(engine: Engine, ws: str, minutes: int) -> None:
    """Move the register failure `minutes` into the past (time moves by writing)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_register_failure_at = now() - make_interval("
                "mins => :m) WHERE id = :id"
            ),
            {"m": minutes, "id": ws},
        )


def row_json(engine: Engine, ws: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT to_jsonb(w)::text FROM workspaces w WHERE id = :id"), {"id": ws}
        ).scalar_one()


def skipped_cards(reason: str) -> float:
    value = REGISTRY.get_sample_value("registry_heartbeat_cards_skipped_total", {"reason": reason})
    return value or 0.0


# --- heartbeats: new transitions ------------------------------------------------------


def test_TestHeartbeatHandler_FailedToOnline(db: Engine, worker: Any, celery_app: Celery) -> None:
    ws = new_id()
    token = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["auth_token"]
    set_status(db, ws, "failed")  # e.g. the provisioning sweep gave up on it

    result = heartbeat_msg(celery_app, ws, auth_token=token)

    assert result == {"status": "ok", "workspace_status": "online"}
    assert workspace(db, ws).status == "online"
    assert recorded_events(db, ws)[-1] == ("WORKSPACE_ONLINE", {"recovered_from": "failed"})


def test_awaiting_agent_goes_online_without_a_registration(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    created = create_now("laptop", runtime="external")
    ws, token = created["workspace_id"], created["auth_token"]
    assert workspace(db, ws).registered_at is None

    result = heartbeat_msg(celery_app, ws, auth_token=token)

    assert result == {"status": "ok", "workspace_status": "online"}
    assert recorded_events(db, ws)[-1] == (
        "WORKSPACE_ONLINE",
        {"recovered_from": "awaiting_agent"},
    )


# --- register failure -------------------------------------------------------------------


def test_TestRegister_FailureRecordsLastRegisterFailure(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    token = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["auth_token"]
    events_before = recorded_events(db, ws)

    refused = register_msg(celery_app, ws, url=METADATA_URL, auth_token=token)

    assert refused["status"] == "rejected"
    assert refused["error"].startswith("url: 169.254.169.254 is in a blocked range")
    row = workspace(db, ws)
    assert (row.url, row.status) == (GOOD_URL, "online")  # the registration changed nothing
    assert failure_age(db, ws) is not None and failure_age(db, ws) < 5  # but it is recorded
    assert recorded_events(db, ws) == events_before

    # A missing URL in push mode is a failure after auth too.
    age_failure(db, ws, 10)
    missing = register_msg(celery_app, ws, url="", auth_token=token)
    assert missing["error"] == "url is required for push-mode workspaces"
    assert failure_age(db, ws) < 5

    # While it is recent, a heartbeat degrades the online workspace.
    result = heartbeat_msg(celery_app, ws, auth_token=token, sample_error="cannot bind")
    assert result == {"status": "ok", "workspace_status": "degraded"}
    assert recorded_events(db, ws)[-1] == (
        "WORKSPACE_DEGRADED",
        {"register_failure": True, "sample_error": "cannot bind"},
    )


def test_TestRegister_Unauthenticated401DoesNotStamp(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")
    before = row_json(db, ws)

    stranger = register_msg(celery_app, ws, url=METADATA_URL, auth_token="not-the-token")
    assert stranger["status"] == "unauthorized"
    no_token = register_msg(celery_app, ws, url=METADATA_URL)
    assert no_token["status"] == "unauthorized"
    # A malformed payload never reaches the token check: not a register failure either.
    malformed = run_message(celery_app, REGISTER_TASK, {"id": ws, "agent_card": "nope"})
    assert malformed["status"] == "rejected"
    assert malformed["error"].startswith("agent_card:")

    assert failure_age(db, ws) is None
    assert row_json(db, ws) == before


def test_TestHeartbeat_RecentRegisterFailure_BlocksRecovery(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    token = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["auth_token"]
    register_msg(celery_app, ws, url=METADATA_URL, auth_token=token)
    assert heartbeat_msg(celery_app, ws, auth_token=token)["workspace_status"] == "degraded"

    # Healthy heartbeats do not bring it back while the failure is recent.
    for _ in range(2):
        result = heartbeat_msg(celery_app, ws, auth_token=token, error_rate=0.0)
        assert result == {"status": "ok", "workspace_status": "degraded"}

    # Five minutes later the failure no longer counts: the next heartbeat recovers it.
    age_failure(db, ws, 6)
    result = heartbeat_msg(celery_app, ws, auth_token=token, error_rate=0.0)
    assert result == {"status": "ok", "workspace_status": "online"}
    assert recorded_events(db, ws)[-1] == ("WORKSPACE_ONLINE", {"recovered_from": "degraded"})


def test_a_successful_registration_clears_the_register_failure(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    token = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["auth_token"]
    register_msg(celery_app, ws, url=METADATA_URL, auth_token=token)
    assert failure_age(db, ws) is not None

    assert register_msg(celery_app, ws, url=GOOD_URL, auth_token=token)["status"] == "registered"

    assert failure_age(db, ws) is None
    assert heartbeat_msg(celery_app, ws, auth_token=token)["workspace_status"] == "online"


def test_a_heartbeat_carrying_a_card_clears_the_register_failure(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    token = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["auth_token"]
    register_msg(celery_app, ws, url=METADATA_URL, auth_token=token)
    assert heartbeat_msg(celery_app, ws, auth_token=token)["workspace_status"] == "degraded"
    card_before = workspace(db, ws).agent_card

    # A card whose URL fails the check clears nothing.
    bad = {"name": "agent", "url": METADATA_URL}
    assert heartbeat_msg(celery_app, ws, auth_token=token, agent_card=bad)["workspace_status"] == (
        "degraded"
    )
    assert failure_age(db, ws) is not None

    card = {"name": "agent", "url": GOOD_URL}
    result = heartbeat_msg(celery_app, ws, auth_token=token, agent_card=card)

    assert result == {"status": "ok", "workspace_status": "online"}  # cleared, then judged
    assert failure_age(db, ws) is None
    assert workspace(db, ws).agent_card == card_before  # the row had a card: kept


# --- heartbeats: agent_card backfill and is_busy --------------------------------------


def test_TestHeartbeatHandler_BackfillsAgentCard_WhenNull(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = insert_workspace(db, status="online")  # the provisioner's row: no card yet
    assert workspace(db, ws).agent_card is None
    events_before = recorded_events(db, ws)
    card = {"name": "filled", "url": GOOD_URL, "skills": ["x"]}

    assert heartbeat_msg(celery_app, ws, agent_card=card)["status"] == "ok"

    assert workspace(db, ws).agent_card == card
    assert recorded_events(db, ws) == events_before  # no event for a backfill
    # Only a row without a card is filled: a later heartbeat's card changes nothing.
    heartbeat_msg(celery_app, ws, agent_card={"name": "other"})
    assert workspace(db, ws).agent_card == card


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        ("not a card", "not_an_object"),
        (["a", "list"], "not_an_object"),
        ({"name": "x\x00y"}, "invalid"),
        ({"name": "evil", "url": METADATA_URL}, "url_refused"),
        ({"name": "evil", "url": "http://127.0.0.1@169.254.169.254/"}, "url_refused"),
        ({"name": "evil", "url": 42}, "url_refused"),
    ],
    ids=["text", "list", "NUL", "metadata url", "userinfo url", "url not text"],
)
def test_an_unusable_heartbeat_card_is_skipped_and_the_rest_applies(
    db: Engine, worker: Any, celery_app: Celery, card: Any, reason: str
) -> None:
    ws = insert_workspace(db, status="online")
    counted = skipped_cards(reason)

    result = heartbeat_msg(celery_app, ws, agent_card=card, active_tasks=3, uptime_seconds=9)

    assert result == {"status": "ok", "workspace_status": "online"}
    row = workspace(db, ws)
    assert row.agent_card is None  # skipped
    assert (row.active_tasks, row.uptime_seconds, row.is_busy) == (3, 9, True)  # the rest applied
    assert skipped_cards(reason) == counted + 1  # counted by reason (in the worker's process)


@pytest.mark.parametrize(
    ("fields", "busy"),
    [
        ({"is_busy": True, "active_tasks": 0}, True),
        ({"is_busy": False, "active_tasks": 4}, False),
        ({"active_tasks": 2}, True),
        ({"active_tasks": 0}, False),
    ],
    ids=["sent true", "sent false", "absent, tasks", "absent, idle"],
)
def test_is_busy_is_stored_as_sent_else_from_active_tasks(
    db: Engine, worker: Any, celery_app: Celery, fields: dict[str, Any], busy: bool
) -> None:
    ws = insert_workspace(db, status="online")
    assert heartbeat_msg(celery_app, ws, **fields)["status"] == "ok"
    assert workspace(db, ws).is_busy is busy


@pytest.mark.parametrize("value", ["yes", 1, None, {"busy": True}])
def test_is_busy_not_boolean_is_rejected_naming_the_field(
    db: Engine, worker: Any, celery_app: Celery, value: Any
) -> None:
    ws = insert_workspace(db, status="online")
    heartbeat_now(ws, is_busy=True)
    before = row_json(db, ws)
    payload: dict[str, Any] = {"workspace_id": ws, "is_busy": value, "active_tasks": 0}
    if value is None:  # an explicit null is "not sent": it applies
        assert run_message(celery_app, HEARTBEAT_TASK, payload)["status"] == "ok"
        assert workspace(db, ws).is_busy is False
        return

    result = run_message(celery_app, HEARTBEAT_TASK, payload)

    assert result["status"] == "rejected"
    assert result["error"].startswith("is_busy:")
    assert row_json(db, ws) == before


# --- registration -------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["paused", "hibernating", "hibernated"])
def test_a_registration_does_not_wake_a_paused_or_hibernated_workspace(
    db: Engine, redis_client: redis.Redis, worker: Any, celery_app: Celery, status: str
) -> None:
    ws = new_id()
    token = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["auth_token"]
    set_status(db, ws, status)
    redis_client.flushdb()
    before, events_before = row_json(db, ws), recorded_events(db, ws)

    result = register_msg(
        celery_app, ws, url="http://8.8.4.4:9000", agent_card={"name": "new"}, auth_token=token
    )

    assert result == {
        "status": "registered",
        "workspace_id": ws,
        "delivery_mode": "push",
        "workspace_status": status,
    }
    assert row_json(db, ws) == before  # nothing in the row changed
    assert recorded_events(db, ws) == events_before  # no status event
    assert redis_client.keys("*") == []  # no liveness key, no URL cache


def test_a_paused_workspace_without_a_live_token_still_gets_one(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = insert_workspace(db, status="paused")
    result = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")
    assert result["workspace_status"] == "paused"
    assert result["auth_token"]
    assert workspace(db, ws).status == "paused"


@pytest.mark.parametrize(
    ("stored", "kept"),
    [
        ("http://127.0.0.1:32801", True),
        ("http://localhost:32801/a2a", True),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000/", False),
        ("http://127.0.0.1", False),
        ("http://127.0.0.1:x@169.254.169.254:9000/", False),
        ("http://old.example.com:32801", False),
    ],
)
def test_stored_loopback_url_is_kept_unless_port_8000(
    db: Engine, worker: Any, celery_app: Celery, stored: str, kept: bool
) -> None:
    assert keeps_provisioner_url(stored) is kept
    ws = insert_workspace(db, status="provisioning", url=stored)
    assert register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")["status"] == (
        "registered"
    )
    assert workspace(db, ws).url == (stored if kept else GOOD_URL)


def test_push_mode_falls_back_to_the_card_url(db: Engine, worker: Any, celery_app: Celery) -> None:
    ws = new_id()
    card = {"name": "agent", "url": GOOD_URL}
    result = register_msg(celery_app, ws, url="", delivery_mode="push", agent_card=card)
    assert result["status"] == "registered"
    assert workspace(db, ws).url == GOOD_URL

    # The fallback must pass the URL check too; refused after auth, it is recorded.
    token = result["auth_token"]
    bad = {"name": "agent", "url": METADATA_URL}
    refused = register_msg(celery_app, ws, url="", agent_card=bad, auth_token=token)
    assert refused["status"] == "rejected"
    assert refused["error"].startswith("agent_card.url: 169.254.169.254 is in a blocked range")
    assert workspace(db, ws).url == GOOD_URL
    assert failure_age(db, ws) is not None


@pytest.mark.parametrize(
    ("card", "stored"),
    [
        ({}, {"name": "row-name", "description": "row-name"}),
        ({"name": "", "description": ""}, {"name": "row-name", "description": "row-name"}),
        (
            {"name": "0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b", "description": "kept"},
            {"name": "row-name", "description": "kept"},
        ),
        ({"name": "Scout"}, {"name": "Scout", "description": "Scout"}),
        ({"name": "Scout", "description": "x"}, {"name": "Scout", "description": "x"}),
    ],
    ids=["no name", "empty", "uuid name", "no description", "complete"],
)
def test_card_name_and_description_are_filled_in(
    db: Engine, worker: Any, celery_app: Celery, card: dict[str, Any], stored: dict[str, Any]
) -> None:
    ws = insert_workspace(db, status="provisioning")
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET name = 'row-name' WHERE id = :id"), {"id": ws})
    assert register_msg(celery_app, ws, agent_card=card, delivery_mode="poll")["status"] == (
        "registered"
    )
    assert workspace(db, ws).agent_card == stored
    assert recorded_events(db, ws)[-1][1]["agent_card"] == stored


@pytest.mark.parametrize("runtime", ["kimi", "kimi-cli", "external"])
def test_kimi_runtimes_default_to_poll(
    db: Engine, worker: Any, celery_app: Celery, runtime: str
) -> None:
    ws = insert_workspace(db, status="provisioning", runtime=runtime)
    result = register_msg(celery_app, ws)  # no url, no delivery_mode
    assert (result["status"], result["delivery_mode"]) == ("registered", "poll")


# --- SSRF regression (CONTRACT §6 amended) ------------------------------------------------

TRICK_URL = "http://127.0.0.1@169.254.169.254/latest/meta-data/"


def test_poll_mode_userinfo_url_is_refused_and_the_push_trick_cannot_keep_it(
    db: Engine, redis_client: redis.Redis, worker: Any, celery_app: Celery
) -> None:
    # Step 1 of the trick: a poll-mode registration stores a URL that starts like the
    # provisioner's loopback URL but dials cloud metadata.
    ws = new_id()
    refused = register_msg(celery_app, ws, url=TRICK_URL, delivery_mode="poll")
    assert refused["status"] == "rejected"
    assert refused["error"].startswith("url: ") and "userinfo" in refused["error"]
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM workspaces")).scalar_one() == 0
    assert redis_client.keys("*") == []

    # Step 2: a push re-registration would have kept the stored "127.0.0.1" URL. Nothing
    # was stored, so the registry dials only what the push registration gave.
    result = register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")
    assert result["status"] == "registered"
    assert workspace(db, ws).url == GOOD_URL
    token = result["auth_token"]
    again = register_msg(celery_app, ws, url=TRICK_URL, delivery_mode="poll", auth_token=token)
    assert again["status"] == "rejected"
    assert workspace(db, ws).url == GOOD_URL


def test_a_stored_trick_url_is_never_kept(db: Engine, worker: Any, celery_app: Celery) -> None:
    # A row written before this guard existed: the keep rule does not read it as loopback.
    ws = insert_workspace(db, status="online", url=TRICK_URL)
    register_msg(celery_app, ws, url=GOOD_URL, delivery_mode="push")
    assert workspace(db, ws).url == GOOD_URL


def test_a_heartbeat_card_is_looked_up_only_when_authorised_and_wanted(db: Engine) -> None:
    # A card's URL check may wait on DNS: never for a stranger, never for a card that
    # would change nothing (the row has one and no register failure to clear).
    looked_up: list[str] = []

    def resolver(host: str) -> list[str]:
        looked_up.append(host)
        return ["93.184.216.34"]

    ws = new_id()
    token = register_now(ws, card={"name": "agent"})["auth_token"]
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET agent_card = NULL WHERE id = :id"), {"id": ws})
    card = {"name": "agent", "url": "https://agent.example.com/a2a"}

    def beat(auth: str | None) -> dict[str, Any]:
        raw = {"workspace_id": ws, "agent_card": card, "auth_token": auth}
        payload = parse_payload(HeartbeatPayload, {k: v for k, v in raw.items() if v})
        with unit_of_work() as uow:
            (result,) = apply_heartbeats(uow, [payload], resolver=resolver)
        return result

    assert beat("forged")["status"] == "unauthorized"
    assert beat(None)["status"] == "unauthorized"
    assert looked_up == []
    assert workspace(db, ws).agent_card is None

    assert beat(token)["status"] == "ok"
    assert looked_up == ["agent.example.com"]
    assert workspace(db, ws).agent_card == card

    assert beat(token)["status"] == "ok"  # the row has a card now: no lookup
    assert looked_up == ["agent.example.com"]


def test_a_batch_applies_the_new_fields_and_refuses_a_bad_is_busy_alone(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    filled, busy, bad = (insert_workspace(db, status="online") for _ in range(3))
    bad_before = row_json(db, bad)
    card = {"name": "from-a-batch"}
    envelope = {
        "heartbeats": [
            {"workspace_id": filled, "agent_card": card},
            {"workspace_id": busy, "is_busy": True},
            {"workspace_id": bad, "is_busy": "no"},
            {"workspace_id": filled, "agent_card": {"name": "second"}, "active_tasks": 1},
        ]
    }

    result = run_message(celery_app, HEARTBEAT_BATCH_TASK, envelope)

    assert result == {"status": "ok", "applied": 3, "ignored": 0, "rejected": 1, "unauthorized": 0}
    assert workspace(db, filled).agent_card == card  # the first card filled it; kept
    assert workspace(db, filled).is_busy is True  # the last heartbeat: active_tasks 1
    assert workspace(db, busy).is_busy is True
    assert row_json(db, bad) == bad_before
