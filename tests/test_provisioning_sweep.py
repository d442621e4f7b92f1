"""Provisioning timeout sweep (CONTRACT §5) against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
import time
from uuid import UUID

import pytest
from maintenance_helpers import (
    add_workspace,
    environment,
    events,
    run_concurrently,
    set_past,
    status_of,
    workspace,
)
from sqlalchemy import Engine, text

from registry.config import load
from registry.ingestion.heartbeats import apply_heartbeats
from registry.ingestion.payloads import HeartbeatPayload
from registry.sweeps.provisioning import sweep_provisioning, timeout_for
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration


def sweep(override: int | None = None) -> dict:
    with unit_of_work() as uow:
        return sweep_provisioning(uow, timeout_override=override)


def provisioning(db: Engine, runtime: str, age: str) -> UUID:
    return add_workspace(db, status="provisioning", runtime=runtime, in_status_for=age)


def test_default_timeout_is_twelve_minutes(db: Engine, redis_client) -> None:
    stuck = provisioning(db, "langgraph", "13 minutes")
    young = provisioning(db, "langgraph", "11 minutes")

    result = sweep()

    assert result == {"status": "ok", "changed": 1, "more": False}
    row = workspace(db, stuck)
    assert row.status == "failed"
    assert "never registered within 720 s" in row.last_sample_error
    assert status_of(db, young) == "provisioning"
    (event,) = events(db)
    assert event.event_type == "WORKSPACE_PROVISION_FAILED"
    assert event.workspace_id == stuck
    assert event.payload == {
        "error": row.last_sample_error,
        "timeout_secs": 720,
        "runtime": "langgraph",
        "source": "provision_timeout_sweep",
    }
    # Published after the commit, with its event id.
    (_, fields), *_ = redis_client.xrange("events:stream")
    published = json.loads(fields["data"])
    assert published["event"] == "WORKSPACE_PROVISION_FAILED"
    assert published["workspace_id"] == str(stuck)


def test_hermes_gets_thirty_minutes(db: Engine) -> None:
    booting = provisioning(db, "hermes", "29 minutes")
    stuck = provisioning(db, "hermes", "31 minutes")

    assert sweep()["changed"] == 1

    assert status_of(db, booting) == "provisioning"
    assert status_of(db, stuck) == "failed"
    assert events(db)[0].payload["timeout_secs"] == 1800
    assert events(db)[0].payload["runtime"] == "hermes"


def test_override_replaces_every_runtime(db: Engine) -> None:
    hermes = provisioning(db, "hermes", "2 minutes")
    langgraph = provisioning(db, "langgraph", "2 minutes")
    fresh = provisioning(db, "langgraph", "30 seconds")

    assert sweep(override=60)["changed"] == 2

    assert status_of(db, hermes) == "failed"
    assert status_of(db, langgraph) == "failed"
    assert status_of(db, fresh) == "provisioning"
    assert {e.payload["timeout_secs"] for e in events(db)} == {60}


def test_a_long_override_also_lengthens_the_default(db: Engine) -> None:
    # An override replaces the timeout, it is not a floor: 1 h keeps a 20 min row waiting.
    waiting = provisioning(db, "langgraph", "20 minutes")
    assert sweep(override=3600)["changed"] == 0
    assert status_of(db, waiting) == "provisioning"
    assert timeout_for("hermes", 3600) == 3600


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5", " "])
def test_invalid_override_falls_back_to_the_runtime_defaults(db: Engine, raw: str) -> None:
    override = load({"PROVISION_TIMEOUT_SECONDS": raw}).provision_timeout_seconds
    assert override is None
    langgraph = provisioning(db, "langgraph", "13 minutes")
    hermes = provisioning(db, "hermes", "13 minutes")

    sweep(override=override)

    assert status_of(db, langgraph) == "failed"
    assert status_of(db, hermes) == "provisioning"


def test_only_provisioning_is_swept(db: Engine) -> None:
    others = {
        status: add_workspace(db, status=status, in_status_for="3 hours")
        for status in (
            "awaiting_agent",
            "online",
            "degraded",
            "offline",
            "paused",
            "hibernating",
            "hibernated",
            "removed",
            "failed",
        )
    }
    external = add_workspace(
        db, status="awaiting_agent", runtime="external", in_status_for="3 hours"
    )

    assert sweep()["changed"] == 0

    for status, ws in others.items():
        assert status_of(db, ws) == status
    assert status_of(db, external) == "awaiting_agent"
    assert events(db) == []


def test_a_workspace_that_registered_meanwhile_is_left_alone(db: Engine) -> None:
    ws = provisioning(db, "langgraph", "13 minutes")
    # Its first heartbeat lands before the sweep: provisioning → online.
    with unit_of_work() as uow:
        (result,) = apply_heartbeats(uow, [HeartbeatPayload(workspace_id=ws)])
    assert result["workspace_status"] == "online"

    assert sweep()["changed"] == 0
    assert status_of(db, ws) == "online"
    assert [e.event_type for e in events(db)] == ["WORKSPACE_ONLINE"]


def test_a_registration_in_flight_wins(db: Engine) -> None:
    ws = provisioning(db, "langgraph", "13 minutes")
    # A registration holds the row lock (not yet committed) while the sweep runs:
    # the sweep passes over the row without waiting, and the registration commits.
    with db.connect() as registering:
        registering.begin()
        registering.execute(
            text("UPDATE workspaces SET status = 'online' WHERE id = :id"), {"id": ws}
        )
        done = threading.Event()
        outcome: list[dict] = []

        def run() -> None:
            outcome.append(sweep())
            done.set()

        threading.Thread(target=run).start()
        assert done.wait(timeout=10), "the sweep waited on the locked row"
        assert outcome[0]["changed"] == 0
        registering.commit()

    assert sweep()["changed"] == 0
    assert status_of(db, ws) == "online"
    assert events(db, "WORKSPACE_PROVISION_FAILED") == []


def test_a_locked_row_that_stays_provisioning_fails_on_the_next_tick(db: Engine) -> None:
    ws = provisioning(db, "langgraph", "13 minutes")
    with db.connect() as other:
        other.begin()
        other.execute(text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE"), {"id": ws})
        assert sweep()["changed"] == 0
        other.rollback()
    assert sweep()["changed"] == 1
    assert status_of(db, ws) == "failed"


def test_failed_rows_stay_failed_and_are_not_swept_twice(db: Engine) -> None:
    provisioning(db, "langgraph", "13 minutes")
    assert sweep()["changed"] == 1
    assert sweep()["changed"] == 0
    assert len(events(db)) == 1


def test_status_changed_at_is_the_clock(db: Engine) -> None:
    # created long ago but only just (re)entered provisioning: time in status counts.
    ws = add_workspace(db, status="offline", in_status_for="2 hours")
    set_past(db, ws, "created_at", "2 hours")
    with db.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET status = 'provisioning' WHERE id = :id"), {"id": ws}
        )
    assert sweep()["changed"] == 0
    assert status_of(db, ws) == "provisioning"


def test_two_concurrent_sweeps_fail_each_row_once(db: Engine) -> None:
    ids = {provisioning(db, "langgraph", "13 minutes") for _ in range(40)}

    results = run_concurrently(2, sweep)

    assert sum(r["changed"] for r in results) == 40
    recorded = events(db, "WORKSPACE_PROVISION_FAILED")
    assert sorted(e.workspace_id for e in recorded) == sorted(ids)


def test_a_full_batch_says_more(db: Engine) -> None:
    for _ in range(3):
        provisioning(db, "langgraph", "13 minutes")
    with unit_of_work() as uow:
        assert sweep_provisioning(uow, limit=2) == {"status": "ok", "changed": 2, "more": True}
    assert sweep()["changed"] == 1


def test_task_on_the_sweeps_queue(db: Engine, worker, celery_app) -> None:
    stuck = provisioning(db, "hermes", "13 minutes")
    young = provisioning(db, "langgraph", "5 minutes")

    result = celery_app.send_task("registry.sweep_provisioning", queue="registry.sweeps").get(
        timeout=20
    )
    assert result == {"status": "ok", "changed": 0, "more": False}

    # PROVISION_TIMEOUT_SECONDS, read by the worker at run time.
    with environment(PROVISION_TIMEOUT_SECONDS="240"):
        result = celery_app.send_task("registry.sweep_provisioning", queue="registry.sweeps").get(
            timeout=20
        )
    assert result == {"status": "ok", "changed": 2, "more": False}
    assert status_of(db, stuck) == "failed"
    assert status_of(db, young) == "failed"
    assert {e.payload["timeout_secs"] for e in events(db)} == {240}


def test_task_drains_a_full_batch_at_once(db: Engine, worker, celery_app) -> None:
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, status_changed_at) "
                "SELECT gen_random_uuid(), 'bulk', 'provisioning', now() - interval '1 hour' "
                "FROM generate_series(1, 501)"
            )
        )

    first = celery_app.send_task("registry.sweep_provisioning", queue="registry.sweeps").get(
        timeout=20
    )
    assert first == {"status": "ok", "changed": 500, "more": True}

    # The task re-queued itself for the rest instead of waiting one interval.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(events(db)) < 501:
        time.sleep(0.05)
    with db.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM workspaces WHERE status = 'provisioning'")
        ).scalar_one()
    assert left == 0
    assert len(events(db, "WORKSPACE_PROVISION_FAILED")) == 501
