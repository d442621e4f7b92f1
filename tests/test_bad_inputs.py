"""Bad input through a real worker (CONTRACT §4): answered `rejected` naming the field, never
retried, and nothing changes in PostgreSQL or Redis.

Each message is sent by name, as a foreign producer would, to a registry that already
holds a registered workspace (so a message that slipped past validation would have
something to change). Celery's JSON carries NaN, Infinity, NUL and lone surrogates, so
those are sent for real too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    RECORDER,
    db_snapshot,
    heartbeat_now,
    names_field,
    new_id,
    redis_snapshot,
    register_now,
    send,
)
from sqlalchemy import Engine, text

from molecule_registry_client.names import (
    CREATE_WORKSPACE_TASK,
    HEARTBEAT_TASK,
    REGISTER_TASK,
    REMOVE_WORKSPACE_TASK,
    UPDATE_CARD_TASK,
)
from registry.ingestion.payloads import AGENT_CARD_MAX_BYTES, MAX_STRING

pytestmark = pytest.mark.integration

WS = "0b5cde4e-58b1-4f7a-8c7e-2d52a1f3e6b9"  # registered before every case
NAN, INF = float("nan"), float("inf")
Build = Callable[[str], Any]  # the workspace's token -> the message payload


def reg(**fields: Any) -> Build:
    return lambda token: {"id": WS, "agent_card": {"v": 9}, "auth_token": token, **fields}


def hb(**fields: Any) -> Build:
    return lambda token: {"workspace_id": WS, "auth_token": token, "error_rate": 0.9, **fields}


def card(**fields: Any) -> Build:
    return lambda token: {"workspace_id": WS, "agent_card": {"v": 9}, "auth_token": token, **fields}


def const(payload: Any) -> Build:
    return lambda _token: payload


def drop(build: Build, key: str) -> Build:
    return lambda token: {k: v for k, v in build(token).items() if k != key}


# (case, task, payload builder, the field the error must name)
CASES: list[tuple[str, str, Build, str]] = [
    # not a JSON object at all
    ("register: list", REGISTER_TASK, const([WS]), "payload"),
    ("register: string", REGISTER_TASK, const(WS), "payload"),
    ("register: null", REGISTER_TASK, const(None), "payload"),
    ("heartbeat: list", HEARTBEAT_TASK, const([{"workspace_id": WS}]), "payload"),
    ("heartbeat: number", HEARTBEAT_TASK, const(42), "payload"),
    ("update_card: null", UPDATE_CARD_TASK, const(None), "payload"),
    ("create: string", CREATE_WORKSPACE_TASK, const("ws"), "payload"),
    ("remove: list", REMOVE_WORKSPACE_TASK, const([WS]), "payload"),
    # registration
    ("register: id missing", REGISTER_TASK, drop(reg(), "id"), "id"),
    ("register: id not a UUID", REGISTER_TASK, reg(id="workspace-1"), "id"),
    ("register: agent_card missing", REGISTER_TASK, drop(reg(), "agent_card"), "agent_card"),
    ("register: agent_card a list", REGISTER_TASK, reg(agent_card=["a"]), "agent_card"),
    ("register: agent_card too large", REGISTER_TASK, reg(agent_card={"x": "y" * AGENT_CARD_MAX_BYTES}), "agent_card"),
    ("register: agent_card NaN", REGISTER_TASK, reg(agent_card={"score": NAN}), "agent_card"),
    ("register: agent_card NUL", REGISTER_TASK, reg(agent_card={"x": "\x00"}), "agent_card"),
    ("register: agent_card lone surrogate", REGISTER_TASK, reg(agent_card={"x": "\ud800"}), "agent_card"),
    ("register: delivery_mode unknown", REGISTER_TASK, reg(delivery_mode="websocket"), "delivery_mode"),
    ("register: auth_token oversized", REGISTER_TASK, reg(auth_token="t" * 1000), "auth_token"),
    ("register: url with NUL", REGISTER_TASK, reg(url="http://localhost/\x00", delivery_mode="poll"), "url"),
    # heartbeats
    ("heartbeat: workspace_id missing", HEARTBEAT_TASK, drop(hb(), "workspace_id"), "workspace_id"),
    ("heartbeat: workspace_id not a UUID", HEARTBEAT_TASK, hb(workspace_id="abc"), "workspace_id"),
    ("heartbeat: error_rate NaN", HEARTBEAT_TASK, hb(error_rate=NAN), "error_rate"),
    ("heartbeat: error_rate Infinity", HEARTBEAT_TASK, hb(error_rate=INF), "error_rate"),
    ("heartbeat: error_rate above 1", HEARTBEAT_TASK, hb(error_rate=1.5), "error_rate"),
    ("heartbeat: error_rate negative", HEARTBEAT_TASK, hb(error_rate=-0.1), "error_rate"),
    ("heartbeat: error_rate a bool", HEARTBEAT_TASK, hb(error_rate=True), "error_rate"),
    ("heartbeat: error_rate a string", HEARTBEAT_TASK, hb(error_rate="0.9"), "error_rate"),
    ("heartbeat: active_tasks negative", HEARTBEAT_TASK, hb(active_tasks=-1), "active_tasks"),
    ("heartbeat: active_tasks a string", HEARTBEAT_TASK, hb(active_tasks="3"), "active_tasks"),
    ("heartbeat: uptime_seconds negative", HEARTBEAT_TASK, hb(uptime_seconds=-5), "uptime_seconds"),
    ("heartbeat: monthly_spend a string", HEARTBEAT_TASK, hb(monthly_spend="100"), "monthly_spend"),
    ("heartbeat: monthly_spend a bool", HEARTBEAT_TASK, hb(monthly_spend=True), "monthly_spend"),
    ("heartbeat: sample_error oversized", HEARTBEAT_TASK, hb(sample_error="e" * (MAX_STRING + 1)), "sample_error"),
    ("heartbeat: current_task NUL", HEARTBEAT_TASK, hb(current_task="a\x00b"), "current_task"),
    ("heartbeat: runtime_state oversized", HEARTBEAT_TASK, hb(runtime_state="w" * 100), "runtime_state"),
    ("heartbeat: capability not a bool", HEARTBEAT_TASK, hb(runtime_metadata={"capabilities": {"status_mgmt": "yes"}}), "runtime_metadata"),
    ("heartbeat: runtime_metadata a list", HEARTBEAT_TASK, hb(runtime_metadata=[]), "runtime_metadata"),
    ("heartbeat: sent_at garbage", HEARTBEAT_TASK, hb(sent_at="last tuesday"), "sent_at"),
    ("heartbeat: sent_at far future", HEARTBEAT_TASK, hb(sent_at="2999-01-01T00:00:00Z"), "sent_at"),
    ("heartbeat: sent_at NaN", HEARTBEAT_TASK, hb(sent_at=NAN), "sent_at"),
    # card updates
    ("update_card: workspace_id missing", UPDATE_CARD_TASK, drop(card(), "workspace_id"), "workspace_id"),
    ("update_card: agent_card a string", UPDATE_CARD_TASK, card(agent_card="{}"), "agent_card"),
    ("update_card: agent_card Infinity", UPDATE_CARD_TASK, card(agent_card={"x": [INF]}), "agent_card"),
    # lifecycle
    ("create: name missing", CREATE_WORKSPACE_TASK, const({"runtime": "external"}), "name"),
    ("create: parent_id not a UUID", CREATE_WORKSPACE_TASK, const({"name": "n", "parent_id": "p"}), "parent_id"),
    ("create: parent unknown", CREATE_WORKSPACE_TASK, const({"name": "n", "parent_id": new_id()}), "parent_id"),
    ("create: id taken", CREATE_WORKSPACE_TASK, const({"name": "other", "id": WS}), "id"),
    ("create: tier a string", CREATE_WORKSPACE_TASK, const({"name": "n", "tier": "2"}), "tier"),
    ("create: runtime malformed", CREATE_WORKSPACE_TASK, const({"name": "n", "runtime": "Ext!"}), "runtime"),
    ("remove: workspace_id missing", REMOVE_WORKSPACE_TASK, const({}), "workspace_id"),
    ("remove: workspace_id not a UUID", REMOVE_WORKSPACE_TASK, const({"workspace_id": 7}), "workspace_id"),
    ("remove: unknown workspace", REMOVE_WORKSPACE_TASK, const({"workspace_id": new_id()}), "workspace_id"),
]  # fmt: skip

# Registrations refused after their token was accepted (CONTRACT §12): the same
# guarantees, except that workspaces.last_register_failure_at records the refusal.
REGISTER_FAILURES: list[tuple[str, Build, str]] = [
    ("register: push url scheme", reg(url="ftp://localhost/", delivery_mode="push"), "url"),
    ("register: poll url scheme", reg(url="file:///etc/passwd", delivery_mode="poll"), "url"),
    ("register: push url blocked", reg(url="http://169.254.169.254/", delivery_mode="push"), "url"),
    ("register: poll url blocked", reg(url="http://127.0.0.1:8000/", delivery_mode="poll"), "url"),
    ("register: poll url userinfo", reg(url="http://127.0.0.1@169.254.169.254/", delivery_mode="poll"), "url"),
    ("register: push url missing", reg(delivery_mode="push"), "url"),
    ("register: push card url blocked", reg(delivery_mode="push", agent_card={"url": "http://10.0.0.1/"}), "agent_card.url"),
]  # fmt: skip

# Valid input the hijack guard refuses: the same guarantees, status `unauthorized`.
UNAUTHORIZED: list[tuple[str, str, Build]] = [
    ("register without the token", REGISTER_TASK, drop(reg(delivery_mode="poll"), "auth_token")),
    ("heartbeat with a wrong token", HEARTBEAT_TASK, hb(auth_token="forged")),
    ("update_card without the token", UPDATE_CARD_TASK, drop(card(), "auth_token")),
]


@pytest.fixture
def token(db: Engine) -> str:
    issued = register_now(WS, card={"v": 1})["auth_token"]
    heartbeat_now(WS, issued, current_task="busy", active_tasks=1)  # events in the stream
    return issued


def deliver(
    engine: Engine,
    client: redis.Redis,
    app: Celery,
    task: str,
    payload: Any,
    *,
    stamped: bool = False,
) -> dict[str, Any]:
    """Send, wait for the single run, and prove PostgreSQL and Redis are untouched
    (`stamped`: but for the register-failure stamp, which must then be set)."""
    before = (db_snapshot(engine), redis_snapshot(client))
    result = RECORDER.assert_ran_once(send(app, task, payload)).retval
    if stamped:
        with engine.begin() as conn:
            cleared = conn.execute(
                text(
                    "UPDATE workspaces SET last_register_failure_at = NULL "
                    "WHERE id = :id AND last_register_failure_at > now() - interval '1 minute'"
                ),
                {"id": WS},
            ).rowcount
        assert cleared == 1, "the refusal after auth was not recorded"
    assert (db_snapshot(engine), redis_snapshot(client)) == before
    return result


@pytest.mark.parametrize(
    ("task", "build", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_rejected_and_changes_nothing(
    *,
    db: Engine,
    redis_client: redis.Redis,
    worker: Any,
    celery_app: Celery,
    token: str,
    task: str,
    build: Build,
    field: str,
) -> None:
    result = deliver(db, redis_client, celery_app, task, build(token))
    assert set(result) == {"status", "error"}, result
    assert result["status"] == "rejected"
    assert names_field(result["error"], field), result
    assert token not in result["error"]


@pytest.mark.parametrize(
    ("build", "field"), [c[1:] for c in REGISTER_FAILURES], ids=[c[0] for c in REGISTER_FAILURES]
)
def test_registration_refused_after_auth_records_only_the_failure(
    *,
    db: Engine,
    redis_client: redis.Redis,
    worker: Any,
    celery_app: Celery,
    token: str,
    build: Build,
    field: str,
) -> None:
    result = deliver(db, redis_client, celery_app, REGISTER_TASK, build(token), stamped=True)
    assert set(result) == {"status", "error"}, result
    assert result["status"] == "rejected"
    assert names_field(result["error"], field), result
    assert token not in result["error"]


@pytest.mark.parametrize(
    ("task", "build"), [u[1:] for u in UNAUTHORIZED], ids=[u[0] for u in UNAUTHORIZED]
)
def test_unauthorized_messages_change_nothing(
    *,
    db: Engine,
    redis_client: redis.Redis,
    worker: Any,
    celery_app: Celery,
    token: str,
    task: str,
    build: Build,
) -> None:
    result = deliver(db, redis_client, celery_app, task, build(token))
    assert result == {
        "status": "unauthorized",
        "error": "auth_token: missing or not valid for this workspace",
    }
