"""Health sweep (CONTRACT §5): the container pass (FakeContainers) and the remote-agent pass.

Default settings: REMOTE_LIVENESS_STALE_AFTER 180 s (CONTRACT §12).
"""

from __future__ import annotations

import logging
from uuid import UUID

import pytest
from fakes import FakeContainers
from liveness_helpers import (
    add_fleet,
    fresh_liveness_state,
    statuses,
    unreachable_events,
)
from maintenance_helpers import add_workspace, set_past
from sqlalchemy import text

from registry.config import get_settings
from registry.liveness.keys import liveness_key, url_key
from registry.sweeps.containers import ContainerError
from registry.sweeps.health import sweep_containers, sweep_health

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


def _set_status(engine, ws: UUID, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET status = :s WHERE id = :id"), {"s": status, "id": ws}
        )


# --- containers -----------------------------------------------------------------


def test_gone_containers_go_offline_running_ones_stay(liveness_db, redis_client):
    running, gone = add_fleet(liveness_db, 2)
    (gone_degraded,) = add_fleet(liveness_db, 1, status="degraded")
    for ws in (gone, gone_degraded):
        redis_client.set(liveness_key(ws), "online", ex=180)
        redis_client.set(url_key(ws), "http://agent.example", ex=300)
    checker = FakeContainers(running={running})

    result = sweep_health(get_settings(), checker)

    assert result["containers"] == {"checked": 3, "gone": 2, "errors": 0, "changed": 2}
    assert result["changed"] == 2
    assert statuses(liveness_db, [running, gone, gone_degraded]) == {
        running: "online",
        gone: "offline",
        gone_degraded: "offline",
    }
    events = {ws: (kind, payload) for kind, ws, payload in unreachable_events(liveness_db)}
    assert events == {
        gone: ("WORKSPACE_OFFLINE", {"reason": "container_gone", "previous_status": "online"}),
        gone_degraded: (
            "WORKSPACE_OFFLINE",
            {"reason": "container_gone", "previous_status": "degraded"},
        ),
    }
    assert not any(
        redis_client.exists(key(ws))
        for ws in (gone, gone_degraded)
        for key in (liveness_key, url_key)
    )
    # Idempotent.
    assert sweep_health(get_settings(), checker)["changed"] == 0
    assert len(unreachable_events(liveness_db)) == 2


def test_a_checker_error_is_no_false_positive(liveness_db):
    failing, gone = add_fleet(liveness_db, 2)
    checker = FakeContainers(failing={failing})

    result = sweep_health(get_settings(), checker)

    assert result["containers"] == {"checked": 2, "gone": 1, "errors": 1, "changed": 1}
    assert statuses(liveness_db, [failing, gone]) == {failing: "online", gone: "offline"}


def test_an_unexpected_checker_failure_is_skipped_too(liveness_db):
    (ws,) = add_fleet(liveness_db, 1)

    class Broken:
        def is_running(self, workspace_id: UUID) -> bool:
            raise RuntimeError("engine exploded")

    assert sweep_health(get_settings(), Broken())["containers"]["errors"] == 1
    assert statuses(liveness_db, [ws]) == {ws: "online"}


@pytest.mark.parametrize(
    "status",
    [
        "provisioning",
        "removed",
        "paused",
        "hibernating",
        "hibernated",
        "offline",
        "awaiting_agent",
        "failed",
    ],
)
def test_only_live_container_backed_workspaces_are_asked(liveness_db, status):
    ws = add_workspace(liveness_db, status=status)
    (external,) = add_fleet(liveness_db, 1, runtime="external")
    checker = FakeContainers()
    sweep_health(get_settings(), checker)
    assert checker.calls_to("is_running") == []
    assert statuses(liveness_db, [ws, external]) == {ws: status, external: "online"}


def test_a_workspace_that_changed_while_being_checked_is_left_alone(liveness_db):
    # Hibernation claimed the row (and stopped its container) while the sweep asked.
    (ws,) = add_fleet(liveness_db, 1)

    class HibernatesMeanwhile(FakeContainers):
        def is_running(self, workspace_id: UUID) -> bool:
            _set_status(liveness_db, workspace_id, "hibernating")
            return False

    result = sweep_containers(HibernatesMeanwhile())
    assert (result.gone, len(result.changed)) == (1, 0)
    assert statuses(liveness_db, [ws]) == {ws: "hibernating"}


def test_a_workspace_restarted_while_being_checked_is_left_alone(liveness_db):
    # Same status again, but a new spell (offline → online): the old answer is stale.
    (ws,) = add_fleet(liveness_db, 1)

    class RestartsMeanwhile(FakeContainers):
        def is_running(self, workspace_id: UUID) -> bool:
            _set_status(liveness_db, workspace_id, "provisioning")
            _set_status(liveness_db, workspace_id, "online")
            return False

    assert sweep_containers(RestartsMeanwhile()).changed == []
    assert statuses(liveness_db, [ws]) == {ws: "online"}


def test_pages_through_the_fleet(liveness_db):
    fleet = add_fleet(liveness_db, 7)
    checker = FakeContainers(running=set(fleet[:5]))
    result = sweep_containers(checker, batch_size=3)
    assert (result.checked, result.gone, len(result.changed)) == (7, 2, 2)
    assert sorted(checker.calls_to("is_running")) == sorted(fleet)


def test_no_backend_skips_the_container_pass_and_says_so_once(liveness_db, caplog, monkeypatch):
    from registry.sweeps import health

    monkeypatch.setattr(health, "_announced_disabled", False)
    (ws,) = add_fleet(liveness_db, 1)
    with caplog.at_level(logging.INFO, logger="registry.sweeps.health"):
        first = sweep_health(get_settings(), None)
        second = sweep_health(get_settings(), None)
    assert first["containers"] == second["containers"] == "disabled"
    assert sum("container pass off" in r.getMessage() for r in caplog.records) == 1
    assert statuses(liveness_db, [ws]) == {ws: "online"}


# --- remote agents ----------------------------------------------------------------


def test_quiet_external_agents_go_awaiting_agent(liveness_db, redis_client):
    (stale,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age="185 seconds")
    (stale_degraded,) = add_fleet(
        liveness_db, 1, status="degraded", runtime="external", heartbeat_age="185 seconds"
    )
    (never,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age=None)
    set_past(liveness_db, never, "updated_at", "185 seconds")  # COALESCE falls back to it
    (fresh,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age="175 seconds")
    (never_fresh,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age=None)
    # A container-backed workspace this quiet is the backstop's business, not this pass's.
    (internal,) = add_fleet(liveness_db, 1, heartbeat_age="185 seconds")
    redis_client.set(url_key(stale), "http://laptop.example", ex=300)

    result = sweep_health(get_settings(), None)

    assert result["remote"] == {"changed": 3, "more": False}
    assert statuses(liveness_db, [stale, stale_degraded, never, fresh, never_fresh, internal]) == {
        stale: "awaiting_agent",
        stale_degraded: "awaiting_agent",
        never: "awaiting_agent",
        fresh: "online",
        never_fresh: "online",
        internal: "online",
    }
    events = {ws: (kind, payload) for kind, ws, payload in unreachable_events(liveness_db)}
    assert events[stale_degraded] == (
        "WORKSPACE_AWAITING_AGENT",
        {"reason": "heartbeat_stale", "previous_status": "degraded"},
    )
    assert set(events) == {stale, stale_degraded, never}
    assert not redis_client.exists(url_key(stale))
    assert sweep_health(get_settings(), None)["changed"] == 0


@pytest.mark.parametrize(
    "status", ["removed", "provisioning", "paused", "hibernated", "offline", "failed"]
)
def test_remote_pass_leaves_other_statuses_alone(liveness_db, status):
    ws = add_workspace(liveness_db, status=status, runtime="external")
    set_past(liveness_db, ws, "last_heartbeat_at", "1 hour")
    set_past(liveness_db, ws, "updated_at", "1 hour")
    assert sweep_health(get_settings(), None)["changed"] == 0
    assert statuses(liveness_db, [ws]) == {ws: status}


def test_a_failing_container_pass_does_not_stop_the_remote_pass(liveness_db, monkeypatch):
    from registry.sweeps import health

    def broken(*_args, **_kwargs):
        raise ContainerError("engine unreachable")

    monkeypatch.setattr(health, "sweep_containers", broken)
    (ws,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age="5 minutes")
    result = sweep_health(get_settings(), FakeContainers())
    assert result["containers"] == "error"
    assert result["remote"]["changed"] == 1
    assert statuses(liveness_db, [ws]) == {ws: "awaiting_agent"}
