"""Stale-heartbeat backstop (CONTRACT §5): what the listener misses, the database still knows.

Default settings: LIVENESS_TTL_SECONDS 180 + BACKSTOP_GRACE_SECONDS 30 = stale after
210 s without a heartbeat.
"""

from __future__ import annotations

import time

import pytest
from liveness_helpers import (
    add_fleet,
    fresh_liveness_state,
    statuses,
    unreachable_events,
    wait_until,
)
from maintenance_helpers import add_workspace, set_past
from sqlalchemy import text

from registry.config import get_settings
from registry.liveness.keys import liveness_key, url_key
from registry.sweeps.backstop import sweep_backstop

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


def test_stale_live_workspaces_are_marked_like_an_expiry(liveness_db, redis_client):
    stale = add_fleet(liveness_db, 1, heartbeat_age="215 seconds")
    stale += add_fleet(liveness_db, 1, status="degraded", heartbeat_age="215 seconds")
    (external,) = add_fleet(liveness_db, 1, runtime="external", heartbeat_age="10 minutes")
    (fresh,) = add_fleet(liveness_db, 1, heartbeat_age="205 seconds")  # within TTL + grace
    for ws in [*stale, external]:
        redis_client.set(url_key(ws), "http://agent.example", ex=300)

    result = sweep_backstop(get_settings())

    assert result == {"status": "ok", "changed": 3, "more": False}
    assert statuses(liveness_db, [*stale, external, fresh]) == {
        stale[0]: "offline",
        stale[1]: "offline",
        external: "awaiting_agent",
        fresh: "online",
    }
    events = {ws: (kind, payload) for kind, ws, payload in unreachable_events(liveness_db)}
    assert events[stale[1]] == (
        "WORKSPACE_OFFLINE",
        {"reason": "liveness_expired", "previous_status": "degraded"},
    )
    assert events[external][0] == "WORKSPACE_AWAITING_AGENT"
    assert len(events) == 3
    assert not any(redis_client.exists(url_key(ws)) for ws in [*stale, external])

    # Idempotent: a second run finds nothing and records nothing.
    assert sweep_backstop(get_settings())["changed"] == 0
    assert len(unreachable_events(liveness_db)) == 3


@pytest.mark.parametrize(
    "status",
    [
        "provisioning",
        "awaiting_agent",
        "offline",
        "failed",
        "paused",
        "hibernating",
        "hibernated",
        "removed",
    ],
)
def test_only_online_and_degraded_are_candidates(liveness_db, status):
    ws = add_workspace(liveness_db, status=status)
    set_past(liveness_db, ws, "last_heartbeat_at", "1 hour")
    assert sweep_backstop(get_settings())["changed"] == 0
    assert statuses(liveness_db, [ws]) == {ws: status}
    assert unreachable_events(liveness_db) == []


def test_never_heartbeated_rows_are_not_guessed_at(liveness_db):
    (ws,) = add_fleet(liveness_db, 1, heartbeat_age=None)
    assert sweep_backstop(get_settings())["changed"] == 0
    assert statuses(liveness_db, [ws]) == {ws: "online"}


def test_catches_a_key_that_expired_while_no_listener_ran(liveness_db, redis_client):
    (ws,) = add_fleet(liveness_db, 1, heartbeat_age="4 minutes")
    redis_client.set(liveness_key(ws), "online", px=200)
    time.sleep(0.4)
    assert not redis_client.exists(liveness_key(ws))  # expired; nobody listened
    assert statuses(liveness_db, [ws]) == {ws: "online"}

    assert sweep_backstop(get_settings())["changed"] == 1
    assert statuses(liveness_db, [ws]) == {ws: "offline"}


def test_catches_keys_lost_to_a_redis_restart(liveness_db, redis_client):
    lost = add_fleet(liveness_db, 3, heartbeat_age="4 minutes")
    (alive,) = add_fleet(liveness_db, 1, heartbeat_age="10 seconds")
    for ws in [*lost, alive]:
        redis_client.set(liveness_key(ws), "online", ex=180)
    redis_client.flushdb()  # what a restart without persistence leaves: nothing expires

    assert sweep_backstop(get_settings())["changed"] == 3
    assert statuses(liveness_db, [*lost, alive]) == {
        **dict.fromkeys(lost, "offline"),
        alive: "online",
    }


def test_batches_are_bounded_and_say_when_more_is_waiting(liveness_db):
    add_fleet(liveness_db, 5, heartbeat_age="10 minutes")
    first = sweep_backstop(get_settings(), batch_size=3)
    assert (first["changed"], first["more"]) == (3, True)
    second = sweep_backstop(get_settings(), batch_size=3)
    assert (second["changed"], second["more"]) == (2, False)
    assert len(unreachable_events(liveness_db)) == 5


def test_a_row_locked_by_a_heartbeat_in_flight_is_skipped(liveness_db):
    (ws,) = add_fleet(liveness_db, 1, heartbeat_age="10 minutes")
    with liveness_db.connect() as heartbeat:
        heartbeat.execute(text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE"), {"id": ws})
        # The sweep neither waits nor marks it: the heartbeat holding it decides.
        started = time.monotonic()
        assert sweep_backstop(get_settings())["changed"] == 0
        assert time.monotonic() - started < 5
        heartbeat.execute(
            text("UPDATE workspaces SET last_heartbeat_at = now() WHERE id = :id"), {"id": ws}
        )
        heartbeat.commit()
    assert sweep_backstop(get_settings())["changed"] == 0
    assert statuses(liveness_db, [ws]) == {ws: "online"}


def test_sweep_tasks_answer_by_name_on_the_sweeps_queue(liveness_db, worker, celery_app):
    add_fleet(liveness_db, 2, heartbeat_age="10 minutes")
    backstop = celery_app.send_task("registry.sweep_backstop", queue="registry.sweeps").get(
        timeout=30
    )
    assert backstop == {"status": "ok", "changed": 2, "more": False}
    # The backstop's tick also sent a heartbeat-queue probe, which a heartbeat consumer ran.
    wait_until(lambda: probe_lags(liveness_db), timeout=15, what="the probe consumed")
    assert 0 <= probe_lags(liveness_db)[0] < 10
    health = celery_app.send_task("registry.sweep_health", queue="registry.sweeps").get(timeout=30)
    assert health["status"] == "ok"
    assert health["changed"] == 0
    assert health["containers"] == "disabled"  # CONTAINER_BACKEND=none in the tests


def probe_lags(engine) -> list[float]:
    with engine.connect() as conn:
        return [
            float(lag)
            for (lag,) in conn.execute(
                text(
                    "SELECT EXTRACT(EPOCH FROM consumed_at - sent_at) FROM heartbeat_probes "
                    "WHERE consumed_at IS NOT NULL"
                )
            )
        ]
