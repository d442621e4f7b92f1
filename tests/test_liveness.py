"""Liveness expiry (CONTRACT §5, §8), in process: the notification config and the transition.

The listener process itself (real expiring keys, restarts, two at once) is in
test_liveness_listener.py.
"""

from __future__ import annotations

import time
import uuid

import pytest
from liveness_helpers import (
    PrivateRedis,
    add_fleet,
    fresh_liveness_state,
    statuses,
    unreachable_events,
)
from maintenance_helpers import add_workspace, set_past

from registry.config import get_settings
from registry.liveness.expiry import (
    NotificationsUnavailable,
    ensure_expired_notifications,
    expired_channel,
    merged_flags,
)
from registry.liveness.keys import liveness_key, url_key
from workers.liveness import LivenessListener

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


@pytest.mark.parametrize(
    ("current", "wanted"),
    [("", "Ex"), ("Ex", None), ("xE", None), ("AKE", None), ("Kg", "KgEx"), ("KA", "KAE")],
)
def test_flags_are_merged_not_clobbered(current, wanted):
    assert merged_flags(current) == wanted


def _config_flags(client) -> str:
    return client.config_get("notify-keyspace-events")["notify-keyspace-events"]


def _wait_for_expiry(pubsub, key: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message and message["data"] == key:
            return True
    return False


def test_enables_expired_events_keeping_the_operators_flags(tmp_path):
    with PrivateRedis(tmp_path) as server:
        client = server.client(3)
        client.config_set("notify-keyspace-events", "Kg")  # an operator's own choice
        channel = expired_channel(3)
        pubsub = client.pubsub()
        pubsub.subscribe(channel)

        ensure_expired_notifications(client, pubsub, channel)
        flags = _config_flags(client)
        assert set("KgEx") <= set(flags), flags
        # Already enabled: nothing to change the second time.
        assert ensure_expired_notifications(client, pubsub, channel) == flags

        client.set("ws:probe", "online", px=50)
        assert _wait_for_expiry(pubsub, "ws:probe")
        pubsub.close()


def test_refused_config_without_notifications_says_what_to_configure(tmp_path):
    with PrivateRedis(tmp_path, "--rename-command", "CONFIG", "") as server:
        client = server.client()
        pubsub = client.pubsub()
        pubsub.subscribe(expired_channel(0))
        with pytest.raises(NotificationsUnavailable, match="notify-keyspace-events") as err:
            ensure_expired_notifications(client, pubsub, expired_channel(0), selftest_timeout=1)
        assert "Ex" in str(err.value)
        pubsub.close()


def test_refused_config_is_fine_when_the_server_already_notifies(tmp_path):
    # A managed Redis: CONFIG forbidden, notifications set in its parameter group.
    args = ("--rename-command", "CONFIG", "", "--notify-keyspace-events", "Ex")
    with PrivateRedis(tmp_path, *args) as server:
        client = server.client()
        pubsub = client.pubsub()
        pubsub.subscribe(expired_channel(0))
        assert "self-test" in ensure_expired_notifications(client, pubsub, expired_channel(0))
        pubsub.close()


def _listener() -> LivenessListener:
    return LivenessListener(get_settings())


def test_expiry_marks_offline_or_awaiting_agent_and_clears_keys(liveness_db, redis_client):
    (online,) = add_fleet(liveness_db, 1, heartbeat_age="10 minutes")
    (degraded,) = add_fleet(liveness_db, 1, status="degraded", heartbeat_age="10 minutes")
    (external,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age="10 minutes")
    for ws in (online, degraded, external):
        redis_client.set(url_key(ws), "http://agent.example:8000", ex=300)

    changed = _listener().handle([liveness_key(ws) for ws in (online, degraded, external)])

    assert changed == 3
    assert statuses(liveness_db, [online, degraded, external]) == {
        online: "offline",
        degraded: "offline",
        external: "awaiting_agent",
    }
    events = {ws: (kind, payload) for kind, ws, payload in unreachable_events(liveness_db)}
    assert events == {
        online: ("WORKSPACE_OFFLINE", {"reason": "liveness_expired", "previous_status": "online"}),
        degraded: (
            "WORKSPACE_OFFLINE",
            {"reason": "liveness_expired", "previous_status": "degraded"},
        ),
        external: (
            "WORKSPACE_AWAITING_AGENT",
            {"reason": "liveness_expired", "previous_status": "online"},
        ),
    }
    assert not any(redis_client.exists(url_key(ws)) for ws in (online, degraded, external))


def test_only_exact_liveness_keys_count(liveness_db):
    (ws,) = add_fleet(liveness_db, 1, heartbeat_age="10 minutes")
    other_keys = [
        f"ws:{ws}:url",
        f"ws:{ws}:internal_url",
        f"xws:{ws}",
        "ws:not-a-uuid",
        "events:stream",
    ]
    assert _listener().handle(other_keys) == 0
    assert statuses(liveness_db, [ws]) == {ws: "online"}
    assert unreachable_events(liveness_db) == []


@pytest.mark.parametrize(
    ("status", "runtime"),
    [
        ("removed", "langgraph"),
        ("paused", "langgraph"),
        ("hibernating", "langgraph"),
        ("hibernated", "langgraph"),
        ("offline", "langgraph"),  # already its target
        ("awaiting_agent", "external"),  # already its target
    ],
)
def test_excluded_statuses_and_targets_are_left_alone(liveness_db, status, runtime):
    ws = add_workspace(liveness_db, status=status, runtime=runtime)
    set_past(liveness_db, ws, "last_heartbeat_at", "10 minutes")
    assert _listener().handle([liveness_key(ws)]) == 0
    assert statuses(liveness_db, [ws]) == {ws: status}
    assert unreachable_events(liveness_db) == []


def test_a_heartbeat_applied_after_the_expiry_wins(liveness_db):
    # The key expired, but a heartbeat landed before the listener got to it.
    (ws,) = add_fleet(liveness_db, 1, heartbeat_age="2 seconds")
    assert _listener().handle([liveness_key(ws)]) == 0
    assert statuses(liveness_db, [ws]) == {ws: "online"}


def test_the_same_notification_twice_changes_once(liveness_db):
    (ws,) = add_fleet(liveness_db, 1, heartbeat_age="10 minutes")
    listener = _listener()
    assert listener.handle([liveness_key(ws), liveness_key(ws)]) == 1
    assert listener.handle([liveness_key(ws)]) == 0
    assert len(unreachable_events(liveness_db)) == 1


def test_unknown_workspace_is_ignored(liveness_db):
    assert _listener().handle([liveness_key(uuid.uuid4())]) == 0
