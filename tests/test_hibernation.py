"""Hibernation sweep (CONTRACT §5) against real PostgreSQL and Redis, with FakeContainers."""

from __future__ import annotations

import logging
import threading
import time
from uuid import UUID

import pytest
from fakes import FakeContainers
from maintenance_helpers import (
    add_workspace,
    events,
    run_concurrently,
    set_past,
    status_of,
    workspace,
)
from sqlalchemy import Engine, text

from registry.ingestion.heartbeats import apply_heartbeats
from registry.ingestion.lifecycle import remove_workspace
from registry.ingestion.payloads import HeartbeatPayload, RemoveWorkspacePayload
from registry.liveness.keys import internal_url_key, liveness_key, url_key
from registry.sweeps import hibernation
from registry.sweeps.hibernation import claim, find_candidates, sweep_hibernation
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration


def idle(db: Engine, idle_for: str = "6 minutes", minutes: int = 5, **kw) -> UUID:
    kw.setdefault("url", "http://10.1.2.3:8000")
    return add_workspace(db, hibernation_idle_minutes=minutes, idle_for=idle_for, **kw)


def heartbeat(ws: UUID, active_tasks: int) -> None:
    with unit_of_work() as uow:
        (result,) = apply_heartbeats(
            uow, [HeartbeatPayload(workspace_id=ws, active_tasks=active_tasks)]
        )
    assert result["status"] == "ok"


def test_an_idle_workspace_hibernates(db: Engine, redis_client) -> None:
    ws = idle(db, name="alpha", tier=3)
    for key in (liveness_key(ws), url_key(ws), internal_url_key(ws)):
        redis_client.set(key, "x")
    fake = FakeContainers(running={ws})

    result = sweep_hibernation(fake)

    assert result == {
        "status": "ok",
        "changed": 1,
        "stop_failed": 0,
        "recovered_stuck": 0,
        "deadline_exceeded": False,
    }
    assert fake.calls_to("stop") == [ws]
    assert not fake.is_running(ws)
    row = workspace(db, ws)
    assert (row.status, row.url, row.idle_since) == ("hibernated", None, None)
    (event,) = events(db)
    assert (event.event_type, event.workspace_id) == ("WORKSPACE_HIBERNATED", ws)
    assert event.payload == {"name": "alpha", "tier": 3}
    assert redis_client.exists(liveness_key(ws), url_key(ws), internal_url_key(ws)) == 0
    # Idempotent: nothing left to do.
    assert sweep_hibernation(fake)["changed"] == 0
    assert len(events(db)) == 1


def test_candidates_and_exclusions(db: Engine) -> None:
    online = idle(db)
    degraded = idle(db, status="degraded")
    excluded = [
        idle(db, idle_for="4 minutes"),  # not idle long enough
        idle(db, idle_for="59 minutes", minutes=60),
        add_workspace(db, hibernation_idle_minutes=None, idle_for="3 hours"),
        add_workspace(db, hibernation_idle_minutes=0, idle_for="3 hours"),
        idle(db, runtime="external"),
        idle(db, idle_for=None, active_tasks=2),  # busy: heartbeats keep idle_since NULL
        idle(db, active_tasks=1),  # another writer's active_tasks is re-checked too
        *(
            idle(db, status=status)
            for status in ("offline", "paused", "provisioning", "awaiting_agent", "failed")
        ),
        idle(db, status="hibernated"),
        idle(db, status="removed"),
    ]
    before = {ws: status_of(db, ws) for ws in excluded}
    fake = FakeContainers()

    assert sweep_hibernation(fake)["changed"] == 2

    assert sorted(fake.calls_to("stop")) == sorted([online, degraded])
    assert status_of(db, online) == status_of(db, degraded) == "hibernated"
    assert {ws: status_of(db, ws) for ws in excluded} == before


def test_failed_stop_restores_the_previous_status_and_retries(db: Engine) -> None:
    ws = idle(db, status="degraded")
    fake = FakeContainers(running={ws}, failing={ws})

    result = sweep_hibernation(fake)

    assert (result["changed"], result["stop_failed"]) == (0, 1)
    row = workspace(db, ws)
    assert row.status == "degraded"  # the status it had, not a guess
    assert row.url == "http://10.1.2.3:8000"
    assert events(db) == []

    fake.failing.clear()  # the engine is back
    assert sweep_hibernation(fake)["changed"] == 1
    assert status_of(db, ws) == "hibernated"
    assert fake.calls_to("stop") == [ws, ws]
    assert len(events(db, "WORKSPACE_HIBERNATED")) == 1


def test_a_workspace_busy_at_claim_time_is_not_claimed(db: Engine) -> None:
    ws = idle(db)
    with db.connect() as conn:
        assert find_candidates(conn) == [ws]
    # Between selection and claim, a heartbeat reports work.
    heartbeat(ws, active_tasks=2)

    with unit_of_work() as uow:
        assert claim(uow, ws) is None
    assert status_of(db, ws) == "online"


def test_a_heartbeat_in_flight_is_never_interrupted(db: Engine) -> None:
    ws = idle(db)
    fake = FakeContainers(running={ws})
    # A heartbeat batch holds the row lock (as apply_heartbeats does) and is about to
    # set active_tasks > 0. The sweep must neither wait for it nor claim the row.
    with db.connect() as heartbeating:
        heartbeating.begin()
        heartbeating.execute(text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE"), {"id": ws})
        outcome: list[dict] = []
        thread = threading.Thread(target=lambda: outcome.append(sweep_hibernation(fake)))
        thread.start()
        thread.join(timeout=10)
        assert outcome and outcome[0]["changed"] == 0, "the sweep waited or claimed"
        heartbeating.execute(
            text("UPDATE workspaces SET active_tasks = 1, idle_since = NULL WHERE id = :id"),
            {"id": ws},
        )
        heartbeating.commit()

    assert sweep_hibernation(fake)["changed"] == 0
    assert status_of(db, ws) == "online"
    assert fake.calls_to("stop") == []


def test_idle_heartbeats_keep_the_idle_time_busy_ones_reset_it(db: Engine) -> None:
    ws = add_workspace(db, hibernation_idle_minutes=5)
    heartbeat(ws, active_tasks=0)
    assert workspace(db, ws).idle_since is not None
    set_past(db, ws, "idle_since", "6 minutes")

    heartbeat(ws, active_tasks=0)  # still idle: the clock keeps running
    with db.connect() as conn:
        age = conn.execute(
            text("SELECT extract(epoch FROM now() - idle_since) FROM workspaces WHERE id = :id"),
            {"id": ws},
        ).scalar_one()
    assert age >= 359

    heartbeat(ws, active_tasks=1)  # busy: the idle time is gone
    assert workspace(db, ws).idle_since is None
    fake = FakeContainers()
    assert sweep_hibernation(fake)["changed"] == 0

    heartbeat(ws, active_tasks=0)  # idle again, from now
    assert sweep_hibernation(fake)["changed"] == 0
    set_past(db, ws, "idle_since", "6 minutes")
    assert sweep_hibernation(fake)["changed"] == 1
    assert status_of(db, ws) == "hibernated"


def test_removed_while_stopping_is_not_hibernated(db: Engine) -> None:
    ws = idle(db)

    class RemovedDuringStop(FakeContainers):
        def stop(self, workspace_id: UUID) -> None:
            with unit_of_work() as uow:
                remove_workspace(uow, RemoveWorkspacePayload(workspace_id=workspace_id))
            super().stop(workspace_id)

    assert sweep_hibernation(RemovedDuringStop())["changed"] == 0
    assert status_of(db, ws) == "removed"
    assert events(db, "WORKSPACE_HIBERNATED") == []


def test_a_row_stuck_in_hibernating_is_finished(db: Engine) -> None:
    # A worker died after its claim: the row sits in hibernating.
    stuck = add_workspace(db, status="hibernating", in_status_for="11 minutes", tier=2)
    in_progress = add_workspace(db, status="hibernating", in_status_for="1 minute")
    fake = FakeContainers(running={stuck, in_progress})

    result = sweep_hibernation(fake)

    assert (result["changed"], result["recovered_stuck"]) == (1, 1)
    assert fake.calls_to("stop") == [stuck]  # another sweep may still own the young one
    assert status_of(db, stuck) == "hibernated"
    assert status_of(db, in_progress) == "hibernating"
    (event,) = events(db)
    assert event.payload["tier"] == 2


def test_a_stuck_row_whose_stop_fails_goes_back_online(db: Engine) -> None:
    stuck = add_workspace(db, status="hibernating", in_status_for="11 minutes")
    fake = FakeContainers(failing={stuck})

    result = sweep_hibernation(fake)

    assert (result["changed"], result["stop_failed"]) == (0, 1)
    assert status_of(db, stuck) == "online"


def test_without_a_backend_the_sweep_is_skipped_and_says_so_once(
    db: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hibernation, "_disabled_logged", [])
    ws = idle(db)
    with caplog.at_level(logging.WARNING, logger="registry.sweeps.hibernation"):
        first = sweep_hibernation(None)
        sweep_hibernation(None)
    assert first == {"status": "ok", "changed": 0, "disabled": "no container backend"}
    assert caplog.text.count("hibernation sweep disabled") == 1
    assert status_of(db, ws) == "online"


def test_deadline_stops_before_claiming_more(db: Engine) -> None:
    ids = [idle(db, idle_for=f"{10 + i} minutes") for i in range(4)]
    now = [0.0]

    class SlowEngine(FakeContainers):
        def stop(self, workspace_id: UUID) -> None:
            now[0] += 25.0
            super().stop(workspace_id)

    fake = SlowEngine()
    result = sweep_hibernation(fake, deadline_seconds=60, clock=lambda: now[0])

    assert result["deadline_exceeded"] is True
    assert result["changed"] == 3  # claimed at t=0, 25, 50; t=75 is past the deadline
    statuses = sorted(status_of(db, ws) for ws in ids)
    assert statuses == ["hibernated", "hibernated", "hibernated", "online"]  # never left claimed


def test_two_concurrent_sweeps_hibernate_each_workspace_once(db: Engine) -> None:
    ids = {idle(db) for _ in range(12)}

    class SlowStop(FakeContainers):
        def stop(self, workspace_id: UUID) -> None:
            time.sleep(0.02)  # keep both sweeps in flight together
            super().stop(workspace_id)

    fake = SlowStop(running=set(ids))
    results = run_concurrently(2, lambda: sweep_hibernation(fake))

    assert sum(r["changed"] for r in results) == 12
    assert sorted(fake.calls_to("stop")) == sorted(ids)  # each container stopped once
    assert sorted(e.workspace_id for e in events(db, "WORKSPACE_HIBERNATED")) == sorted(ids)


def test_task_without_a_backend(db: Engine, worker, celery_app) -> None:
    ws = idle(db)
    result = celery_app.send_task("registry.sweep_hibernation", queue="registry.sweeps").get(
        timeout=20
    )
    assert result == {"status": "ok", "changed": 0, "disabled": "no container backend"}
    assert status_of(db, ws) == "online"
