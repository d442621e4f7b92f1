"""An agent card nested too deep is refused, naming the field, before anything walks it."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import db_snapshot, new_id, redis_snapshot, register_now, run_message
from sqlalchemy import Engine

from molecule_registry_client.names import REGISTER_TASK, UPDATE_CARD_TASK
from registry.ingestion.payloads import (
    AGENT_CARD_MAX_DEPTH,
    PayloadError,
    RegisterPayload,
    UpdateCardPayload,
    parse_payload,
)

REFUSAL = f"agent_card: is nested more than {AGENT_CARD_MAX_DEPTH} levels deep"


def nested(levels: int, *, via_lists: bool = False) -> dict[str, Any]:
    """A card of exactly `levels` levels of objects (or objects in lists)."""
    inner: Any = {"leaf": 1}
    for _ in range(levels - 1):
        inner = {"a": [inner]} if via_lists else {"a": inner}
    return inner


def levels_of(card: Any) -> int:
    depth, layer = 0, [card]
    while layer:
        depth += 1
        layer = [
            child
            for item in layer
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return depth


def test_the_helper_counts_levels() -> None:
    assert levels_of(nested(3)) == 3
    assert levels_of(nested(3, via_lists=True)) == 5


def test_a_card_at_the_limit_is_accepted() -> None:
    card = nested(AGENT_CARD_MAX_DEPTH)
    assert levels_of(card) == AGENT_CARD_MAX_DEPTH
    parsed = parse_payload(RegisterPayload, {"id": new_id(), "agent_card": card})
    assert parsed.agent_card == card
    parsed.model_dump(mode="json")  # what the registration digests: no depth error


@pytest.mark.parametrize(
    "card",
    [
        nested(AGENT_CARD_MAX_DEPTH + 1),
        nested(AGENT_CARD_MAX_DEPTH // 2 + 1, via_lists=True),
        nested(300),
        nested(100_000),  # far past Python's recursion limit: the walk is iterative
    ],
    ids=["limit+1", "lists", "300", "100000"],
)
@pytest.mark.parametrize("model", [RegisterPayload, UpdateCardPayload])
def test_a_deeper_card_is_refused_naming_the_field(card: dict[str, Any], model: type) -> None:
    key = "id" if model is RegisterPayload else "workspace_id"
    with pytest.raises(PayloadError) as caught:
        parse_payload(model, {key: new_id(), "agent_card": card})
    assert caught.value.error.startswith(REFUSAL), caught.value.error


@pytest.mark.integration
# Through a worker: past the limit, and the deepest card a 32-level message body can
# carry (deeper bodies are a matter for the worker's intake, not for the card check).
@pytest.mark.parametrize("levels", [AGENT_CARD_MAX_DEPTH + 1, 29])
def test_through_a_worker_a_deep_card_is_rejected_and_nothing_changes(
    db: Engine, redis_client: redis.Redis, worker: Any, celery_app: Celery, levels: int
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    before = (db_snapshot(db), redis_snapshot(redis_client))
    deep = nested(levels)

    result = run_message(celery_app, REGISTER_TASK, {"id": new_id(), "agent_card": deep})
    assert result["status"] == "rejected" and result["error"].startswith(REFUSAL), result
    card = {"workspace_id": ws, "agent_card": deep, "auth_token": token}
    result = run_message(celery_app, UPDATE_CARD_TASK, card)
    assert result["status"] == "rejected" and result["error"].startswith(REFUSAL), result
    assert (db_snapshot(db), redis_snapshot(redis_client)) == before
