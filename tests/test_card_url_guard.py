"""A card's `url` meets the push-URL guard (CONTRACT §4.3, §6).

The platform and other agents dial what a card advertises, so `registry.update_card`
with a card whose `url` is blocked is rejected, naming the field and the rule, and
nothing changes. A card with a safe url, or with none, updates as before.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    PUBLIC_IP,
    db_snapshot,
    new_id,
    outcome,
    redis_snapshot,
    register_now,
    run_message,
    update_card_now,
    workspace,
)
from sqlalchemy import Engine

from molecule_registry_client.names import UPDATE_CARD_TASK

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.0.0/16, cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "169.254.0.0/16, cloud metadata"),
        ("http://127.0.0.1:8080/", "127.0.0.0/8, loopback"),
        ("http://10.0.0.5/", "private range"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("", "no host"),
    ],
)
def test_a_card_whose_url_is_blocked_is_rejected_and_changes_nothing(
    db: Engine, redis_client: redis.Redis, url: str, rule: str
) -> None:
    ws = new_id()
    token = register_now(ws, card={"name": "a"})["auth_token"]
    before_db, before_redis = db_snapshot(db), redis_snapshot(redis_client)

    answer = outcome(lambda: update_card_now(ws, {"name": "a", "url": url}, token))

    assert answer["status"] == "rejected"
    assert answer["error"].startswith("agent_card.url: ")
    assert rule in answer["error"]
    assert db_snapshot(db) == before_db
    assert redis_snapshot(redis_client) == before_redis


def test_a_card_url_must_be_text(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    answer = outcome(lambda: update_card_now(ws, {"url": ["http://x"]}, token))
    assert answer == {"status": "rejected", "error": "agent_card.url: must be a string"}


def test_no_lookup_is_made_for_an_unauthenticated_card(db: Engine) -> None:
    ws = new_id()
    register_now(ws)
    answer = outcome(lambda: update_card_now(ws, {"url": "http://169.254.169.254/"}, None))
    assert answer["status"] == "unauthorized"


def test_a_card_with_a_safe_url_or_none_updates(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    safe = {"name": "a", "url": f"https://{PUBLIC_IP}/a2a"}
    message = {"workspace_id": ws, "agent_card": safe, "auth_token": token}
    assert run_message(celery_app, UPDATE_CARD_TASK, message)["status"] == "updated"
    assert workspace(db, ws).agent_card == safe

    blocked = {**message, "agent_card": {"url": "http://169.254.169.254/"}}
    answer = run_message(celery_app, UPDATE_CARD_TASK, blocked)
    assert answer["status"] == "rejected" and "cloud metadata" in answer["error"]
    assert workspace(db, ws).agent_card == safe
