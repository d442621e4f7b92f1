"""Payload validation (CONTRACT §4): every bad input is refused with an error naming the field."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from ingest_helpers import names_field

from registry.ingestion.payloads import (
    AGENT_CARD_MAX_BYTES,
    AGENT_CARD_MAX_DEPTH,
    MAX_SPEND_CENTS,
    MAX_STRING,
    MAX_URL,
    TEXT_CAP,
    CreateWorkspacePayload,
    HeartbeatPayload,
    PayloadError,
    RegisterPayload,
    RemoveWorkspacePayload,
    UpdateCardPayload,
    parse_payload,
)

WS = "6a1f0c3e-8a47-4d7e-9a55-0f6f1d2b3c4d"
NAN = float("nan")
INF = float("inf")


def register(**overrides: Any) -> dict[str, Any]:
    return {"id": WS, "agent_card": {"name": "a"}, **overrides}


def heartbeat(**overrides: Any) -> dict[str, Any]:
    return {"workspace_id": WS, **overrides}


def without(raw: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != key}


def rejected(model: type, raw: Any) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_payload(model, raw)
    return str(caught.value)


# --- valid payloads ---------------------------------------------------------


def test_minimal_payloads_parse_with_spec_defaults() -> None:
    reg = parse_payload(RegisterPayload, register())
    assert reg.id == UUID(WS)
    assert (reg.url, reg.delivery_mode, reg.auth_token) == ("", "", None)

    hb = parse_payload(HeartbeatPayload, heartbeat())
    assert (hb.error_rate, hb.active_tasks, hb.uptime_seconds, hb.monthly_spend) == (0, 0, 0, 0)
    assert (hb.runtime_state, hb.runtime_metadata, hb.sent_at) == ("", None, None)

    create = parse_payload(CreateWorkspacePayload, {"name": "n"})
    assert (create.runtime, create.tier, create.max_concurrent_tasks) == ("langgraph", 1, 1)
    assert parse_payload(RemoveWorkspacePayload, {"workspace_id": WS}).workspace_id == UUID(WS)
    card = parse_payload(UpdateCardPayload, {"workspace_id": WS, "agent_card": {}})
    assert card.agent_card == {}


def test_unknown_fields_are_ignored_so_producers_can_upgrade_first() -> None:
    assert parse_payload(HeartbeatPayload, heartbeat(future_field=1)).workspace_id == UUID(WS)


def test_url_whitespace_is_stripped() -> None:
    assert parse_payload(RegisterPayload, register(url="  http://localhost:1  ")).url == (
        "http://localhost:1"
    )


@pytest.mark.parametrize("rate", [0, 1, 0.5, 0.0, 1.0])
def test_error_rate_accepts_integers_and_floats_in_range(rate: float) -> None:
    assert parse_payload(HeartbeatPayload, heartbeat(error_rate=rate)).error_rate == rate


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.250z", datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
        (1_767_323_045, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1_767_323_045.5, datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        # A Python producer's naive datetime (Celery's JSON carries it) is taken as UTC.
        (datetime(2026, 1, 2, 3, 4, 5), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_sent_at_accepts_rfc3339_and_epoch_seconds(sent: Any, expected: datetime) -> None:
    parsed = parse_payload(HeartbeatPayload, heartbeat(sent_at=sent)).sent_at
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_sent_at_a_little_ahead_is_tolerated_as_clock_skew() -> None:
    ahead = time.time() + 120
    assert parse_payload(HeartbeatPayload, heartbeat(sent_at=ahead)).sent_at is not None


@pytest.mark.parametrize(
    ("spend", "stored"),
    [(-5, 0), (0, 0), (1234, 1234), (MAX_SPEND_CENTS, MAX_SPEND_CENTS), (10**30, MAX_SPEND_CENTS)],
)
def test_monthly_spend_is_clamped_to_zero_and_ten_to_the_twelfth(spend: int, stored: int) -> None:
    assert parse_payload(HeartbeatPayload, heartbeat(monthly_spend=spend)).monthly_spend == stored


def test_free_text_is_capped_not_rejected() -> None:
    hb = parse_payload(
        HeartbeatPayload, heartbeat(sample_error="e" * (TEXT_CAP + 10), current_task="t" * 9000)
    )
    assert hb.sample_error == "e" * TEXT_CAP
    assert hb.current_task == "t" * TEXT_CAP


def test_native_status_management_is_read_from_capabilities() -> None:
    def parsed(metadata: Any) -> HeartbeatPayload:
        return parse_payload(HeartbeatPayload, heartbeat(runtime_metadata=metadata))

    assert parsed({"capabilities": {"status_mgmt": True}}).runtime_metadata.native_status_mgmt
    assert not parsed({"capabilities": {"status_mgmt": False}}).runtime_metadata.native_status_mgmt
    assert not parsed({"idle_timeout_seconds": 60}).runtime_metadata.native_status_mgmt


def test_a_deep_but_reasonable_agent_card_is_accepted() -> None:
    # AGENT_CARD_MAX_DEPTH levels: the card, then nested objects, the last holding a list.
    card: dict[str, Any] = {"leaf": True, "list": [1, "x", None]}
    for _ in range(AGENT_CARD_MAX_DEPTH - 2):
        card = {"nested": card, "list": [1, "x", None]}
    assert parse_payload(RegisterPayload, register(agent_card=card)).agent_card == card


# --- bad payloads: (model, raw payload, the field the error must name) ----

CASES: list[tuple[str, type, Any, str]] = [
    # not an object at all
    ("list payload", RegisterPayload, [WS], "payload"),
    ("string payload", HeartbeatPayload, WS, "payload"),
    ("null payload", UpdateCardPayload, None, "payload"),
    ("number payload", RemoveWorkspacePayload, 7, "payload"),
    # ids
    ("register without id", RegisterPayload, without(register(), "id"), "id"),
    ("register id not a UUID", RegisterPayload, register(id="ws-1"), "id"),
    ("register id a number", RegisterPayload, register(id=12), "id"),
    ("register id null", RegisterPayload, register(id=None), "id"),
    ("heartbeat without workspace_id", HeartbeatPayload, {}, "workspace_id"),
    ("heartbeat workspace_id garbage", HeartbeatPayload, heartbeat(workspace_id="x"), "workspace_id"),
    ("card update workspace_id list", UpdateCardPayload, {"workspace_id": [WS], "agent_card": {}}, "workspace_id"),
    ("remove without workspace_id", RemoveWorkspacePayload, {}, "workspace_id"),
    ("create parent_id garbage", CreateWorkspacePayload, {"name": "n", "parent_id": "p"}, "parent_id"),
    ("create id garbage", CreateWorkspacePayload, {"name": "n", "id": "nope"}, "id"),
    # agent_card
    ("agent_card missing", RegisterPayload, without(register(), "agent_card"), "agent_card"),
    ("agent_card a list", RegisterPayload, register(agent_card=[1]), "agent_card"),
    ("agent_card a string", RegisterPayload, register(agent_card="{}"), "agent_card"),
    ("agent_card null", RegisterPayload, register(agent_card=None), "agent_card"),
    ("agent_card too large", RegisterPayload, register(agent_card={"x": "a" * AGENT_CARD_MAX_BYTES}), "agent_card"),
    ("agent_card NaN", RegisterPayload, register(agent_card={"score": NAN}), "agent_card"),
    ("agent_card Infinity", UpdateCardPayload, {"workspace_id": WS, "agent_card": {"x": [INF]}}, "agent_card"),
    ("agent_card NUL in a value", RegisterPayload, register(agent_card={"x": "a\x00b"}), "agent_card"),
    ("agent_card NUL in a key", RegisterPayload, register(agent_card={"a\x00": 1}), "agent_card"),
    ("agent_card lone surrogate", RegisterPayload, register(agent_card={"x": ["\ud800"]}), "agent_card"),
    # url / delivery mode / token
    ("url too long", RegisterPayload, register(url="http://a/" + "p" * MAX_URL), "url"),
    ("url not a string", RegisterPayload, register(url=["http://a"]), "url"),
    ("url with NUL", RegisterPayload, register(url="http://a\x00b"), "url"),
    ("delivery_mode unknown", RegisterPayload, register(delivery_mode="websocket"), "delivery_mode"),
    ("delivery_mode upper case", RegisterPayload, register(delivery_mode="PUSH"), "delivery_mode"),
    ("delivery_mode a number", RegisterPayload, register(delivery_mode=1), "delivery_mode"),
    ("auth_token too long", RegisterPayload, register(auth_token="t" * 300), "auth_token"),
    ("auth_token a number", HeartbeatPayload, heartbeat(auth_token=123), "auth_token"),
    ("auth_token lone surrogate", HeartbeatPayload, heartbeat(auth_token="\udc80"), "auth_token"),
    # error_rate
    ("error_rate NaN", HeartbeatPayload, heartbeat(error_rate=NAN), "error_rate"),
    ("error_rate Infinity", HeartbeatPayload, heartbeat(error_rate=INF), "error_rate"),
    ("error_rate negative", HeartbeatPayload, heartbeat(error_rate=-0.01), "error_rate"),
    ("error_rate above one", HeartbeatPayload, heartbeat(error_rate=1.01), "error_rate"),
    ("error_rate a bool", HeartbeatPayload, heartbeat(error_rate=True), "error_rate"),
    ("error_rate a string", HeartbeatPayload, heartbeat(error_rate="0.5"), "error_rate"),
    # counts and spend
    ("active_tasks negative", HeartbeatPayload, heartbeat(active_tasks=-1), "active_tasks"),
    ("active_tasks a string", HeartbeatPayload, heartbeat(active_tasks="3"), "active_tasks"),
    ("active_tasks a float", HeartbeatPayload, heartbeat(active_tasks=2.5), "active_tasks"),
    ("active_tasks a bool", HeartbeatPayload, heartbeat(active_tasks=True), "active_tasks"),
    ("active_tasks beyond int32", HeartbeatPayload, heartbeat(active_tasks=2**31), "active_tasks"),
    ("uptime_seconds negative", HeartbeatPayload, heartbeat(uptime_seconds=-30), "uptime_seconds"),
    ("monthly_spend a string", HeartbeatPayload, heartbeat(monthly_spend="100"), "monthly_spend"),
    ("monthly_spend a bool", HeartbeatPayload, heartbeat(monthly_spend=False), "monthly_spend"),
    ("monthly_spend a float", HeartbeatPayload, heartbeat(monthly_spend=1.5), "monthly_spend"),
    # strings
    ("sample_error oversized", HeartbeatPayload, heartbeat(sample_error="e" * (MAX_STRING + 1)), "sample_error"),
    ("sample_error NUL", HeartbeatPayload, heartbeat(sample_error="bad\x00"), "sample_error"),
    ("current_task a number", HeartbeatPayload, heartbeat(current_task=5), "current_task"),
    ("current_task lone surrogate", HeartbeatPayload, heartbeat(current_task="\ud83d"), "current_task"),
    ("runtime_state oversized", HeartbeatPayload, heartbeat(runtime_state="w" * 65), "runtime_state"),
    ("runtime_state null", HeartbeatPayload, heartbeat(runtime_state=None), "runtime_state"),
    # runtime_metadata
    ("runtime_metadata a string", HeartbeatPayload, heartbeat(runtime_metadata="x"), "runtime_metadata"),
    ("capability not a bool", HeartbeatPayload, heartbeat(runtime_metadata={"capabilities": {"status_mgmt": 1}}), "runtime_metadata.capabilities.status_mgmt"),
    ("capability name with NUL", HeartbeatPayload, heartbeat(runtime_metadata={"capabilities": {"a\x00": True}}), "runtime_metadata.capabilities"),
    ("idle_timeout negative", HeartbeatPayload, heartbeat(runtime_metadata={"idle_timeout_seconds": -1}), "runtime_metadata.idle_timeout_seconds"),
    # sent_at
    ("sent_at garbage", HeartbeatPayload, heartbeat(sent_at="yesterday"), "sent_at"),
    ("sent_at epoch as text", HeartbeatPayload, heartbeat(sent_at="1767323045"), "sent_at"),
    ("sent_at a bool", HeartbeatPayload, heartbeat(sent_at=True), "sent_at"),
    ("sent_at negative", HeartbeatPayload, heartbeat(sent_at=-1), "sent_at"),
    ("sent_at NaN", HeartbeatPayload, heartbeat(sent_at=NAN), "sent_at"),
    ("sent_at out of range", HeartbeatPayload, heartbeat(sent_at=1e20), "sent_at"),
    ("sent_at an object", HeartbeatPayload, heartbeat(sent_at={"t": 1}), "sent_at"),
    # create_workspace
    ("create without name", CreateWorkspacePayload, {}, "name"),
    ("create empty name", CreateWorkspacePayload, {"name": ""}, "name"),
    ("create name too long", CreateWorkspacePayload, {"name": "n" * 300}, "name"),
    ("create name NUL", CreateWorkspacePayload, {"name": "a\x00"}, "name"),
    ("create runtime with spaces", CreateWorkspacePayload, {"name": "n", "runtime": "lang graph"}, "runtime"),
    ("create tier negative", CreateWorkspacePayload, {"name": "n", "tier": -1}, "tier"),
    ("create tier a string", CreateWorkspacePayload, {"name": "n", "tier": "2"}, "tier"),
    ("create max_concurrent_tasks zero", CreateWorkspacePayload, {"name": "n", "max_concurrent_tasks": 0}, "max_concurrent_tasks"),
    ("create hibernation negative", CreateWorkspacePayload, {"name": "n", "hibernation_idle_minutes": -5}, "hibernation_idle_minutes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "raw", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_naming_the_field(model: type, raw: Any, field: str) -> None:
    error = rejected(model, raw)
    # A bad dict key is named after its mapping: "runtime_metadata.capabilities.<key>...".
    assert names_field(error, field), error


def test_every_bad_field_is_named_at_once() -> None:
    error = rejected(HeartbeatPayload, heartbeat(error_rate=2, active_tasks=-1, sent_at="x"))
    for field in ("error_rate:", "active_tasks:", "sent_at:"):
        assert field in error


def test_missing_field_says_it_is_required() -> None:
    assert rejected(RegisterPayload, {"agent_card": {}}) == "id: is required"


def test_error_never_echoes_the_token() -> None:
    secret = "s3cr3t-" + "x" * 300
    assert "s3cr3t" not in rejected(HeartbeatPayload, heartbeat(auth_token=secret))
