"""Events carry the agent card only up to EVENT_CARD_MAX_BYTES; above it, its digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis
from ingest_helpers import (
    new_id,
    recorded_events,
    register_now,
    stream_events,
    update_card_now,
    workspace,
)
from sqlalchemy import Engine

from registry.events.size import EVENT_CARD_MAX_BYTES, bounded_payload, card_digest
from registry.events.text import describe
from registry.ingestion.payloads import AGENT_CARD_MAX_BYTES


def card_of(size: int) -> dict[str, Any]:
    """A card whose canonical JSON is exactly `size` bytes."""
    card = {"name": "big", "description": "a big card", "pad": ""}  # nothing to fill in (§12)
    card["pad"] = "x" * (size - len(json.dumps(card, separators=(",", ":"))))
    assert card_digest(card)["agent_card_bytes"] == size
    return card


def test_a_small_card_stays_in_the_payload() -> None:
    payload = {"url": "", "agent_card": card_of(EVENT_CARD_MAX_BYTES), "delivery_mode": "poll"}
    assert bounded_payload(payload) is payload


def test_a_large_card_becomes_its_digest() -> None:
    card = card_of(EVENT_CARD_MAX_BYTES + 1)
    payload = {"url": "http://a", "agent_card": card, "delivery_mode": "push"}
    canonical = json.dumps(card, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert bounded_payload(payload) == {
        "url": "http://a",
        "delivery_mode": "push",
        "agent_card_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "agent_card_bytes": EVENT_CARD_MAX_BYTES + 1,
    }
    assert payload["agent_card"] is card  # the caller's payload is not changed


def test_the_digest_ignores_key_order_and_counts_utf8_bytes() -> None:
    assert card_digest({"a": 1, "b": "é"}) == card_digest({"b": "é", "a": 1})
    assert card_digest({"b": "é"})["agent_card_bytes"] == len('{"b":"é"}'.encode())


def test_the_gist_says_the_size() -> None:
    payload = {"agent_card_sha256": "0" * 64, "agent_card_bytes": 9000}
    assert describe("AGENT_CARD_UPDATED", payload) == "agent card updated (9000 bytes)"


def test_registration_and_card_events_are_bounded_in_the_stream_and_the_table(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    largest = card_of(AGENT_CARD_MAX_BYTES - 100)
    token = register_now(ws, card=largest)["auth_token"]
    small = {"name": "small", "version": "2"}
    update_card_now(ws, small, token)
    update_card_now(ws, largest, token)

    assert workspace(db, ws).agent_card == largest  # the row keeps the whole card
    digest = card_digest(largest)
    expected = [
        ("WORKSPACE_ONLINE", {"url": "", "delivery_mode": "poll", **digest}),
        ("AGENT_CARD_UPDATED", {"agent_card": small}),
        ("AGENT_CARD_UPDATED", digest),
    ]
    assert recorded_events(db, ws) == expected
    streamed = [e for e in stream_events(redis_client) if e["workspace_id"] == ws]
    assert [(e["event"], e["payload"]) for e in streamed] == expected
    # Each entry is a few hundred bytes, whatever the card's size.
    for _, fields in redis_client.xrange("events:stream"):
        assert len(fields["data"].encode()) < 1024
