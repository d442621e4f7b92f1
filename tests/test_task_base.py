"""The base task (tasks/base.py): the plumbing every task gets without asking for it."""

from __future__ import annotations

import logging
import uuid

import pytest
import sqlalchemy.exc
from prometheus_client import REGISTRY
from sqlalchemy import text

from molecule_registry_client.names import (
    HEARTBEAT_BATCH_TASK,
    HEARTBEAT_TASK,
    REGISTER_TASK,
    SWEEP_PROVISIONING_TASK,
    SWEEP_QUEUE,
)
from registry.config import get_settings, load
from registry.limits import task_time_limits
from tasks.base import DECLARATIONS, TRANSIENT_ERRORS, PeriodicTask, RegistryTask
from tasks.schedule import beat_schedule, route

SECRET = "plaintext-token-that-must-never-be-logged-0123456789"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def app():
    from workers.app import app as celery_app

    celery_app.loader.import_default_modules()
    return celery_app


def test_a_refusal_is_answered_logged_without_the_payload_and_timed(app, caplog):
    runs = sample("registry_task_duration_seconds_count", task=REGISTER_TASK)
    rejected = sample("registry_task_results_total", task=REGISTER_TASK, status="rejected")
    payload = {"id": "not-a-uuid", "agent_card": {"secret": SECRET}, "auth_token": SECRET}
    with caplog.at_level(logging.DEBUG):
        result = app.tasks[REGISTER_TASK].apply(args=[payload]).get()
    assert result == {"status": "rejected", "error": "id: must be a UUID"}
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "registry.register rejected" in line and "id: must be a UUID" in line for line in lines
    )
    assert not [line for line in lines if SECRET in line]
    assert sample("registry_task_duration_seconds_count", task=REGISTER_TASK) == runs + 1
    assert sample("registry_task_results_total", task=REGISTER_TASK, status="rejected") == (
        rejected + 1
    )


def test_a_refusal_inside_the_unit_of_work_changes_nothing(app, db, caplog):
    ws = str(uuid.uuid4())
    register = app.tasks[REGISTER_TASK]
    first = register.apply(args=[{"id": ws, "agent_card": {}, "delivery_mode": "poll"}]).get()
    assert first["status"] == "registered"
    with caplog.at_level(logging.INFO, logger="tasks.base"):
        again = register.apply(
            args=[{"id": ws, "agent_card": {"v": 2}, "auth_token": SECRET, "delivery_mode": "poll"}]
        ).get()
    assert again["status"] == "unauthorized"
    assert [r.getMessage() for r in caplog.records if r.name == "tasks.base"] == [
        f"registry.register unauthorized (workspace_id={ws}): {again['error']}"
    ]
    with db.connect() as conn:
        card = conn.execute(
            text("SELECT agent_card FROM workspaces WHERE id = :id"), {"id": ws}
        ).scalar_one()
    assert card == {"name": ws, "description": ws}  # as the first registration stored it (§12)


def test_a_periodic_task_is_timed_as_a_task_and_as_a_sweep_and_never_retried(app, db):
    task = app.tasks[SWEEP_PROVISIONING_TASK]
    assert isinstance(task, PeriodicTask)
    assert task.max_retries == 0 and not task.autoretry_for
    sweeps = sample("registry_sweep_runs_total", sweep="provisioning", outcome="ok")
    runs = sample("registry_task_results_total", task=SWEEP_PROVISIONING_TASK, status="ok")
    result = task.apply().get()
    assert result["status"] == "ok" and result["changed"] == 0
    assert sample("registry_sweep_runs_total", sweep="provisioning", outcome="ok") == sweeps + 1
    assert sample("registry_task_results_total", task=SWEEP_PROVISIONING_TASK, status="ok") == (
        runs + 1
    )


def test_every_task_retries_only_transient_errors_within_its_time_limits(app):
    soft, hard = task_time_limits(get_settings())
    assert soft < hard < get_settings().celery_visibility_timeout
    for name in DECLARATIONS:
        task = app.tasks[name]
        assert isinstance(task, RegistryTask)
        assert (task.soft_time_limit, task.time_limit) == (soft, hard)
        if name in (HEARTBEAT_TASK, HEARTBEAT_BATCH_TASK):
            # Heartbeats retry inside the batcher, only while they can still count.
            assert tuple(task.autoretry_for) == ()
        elif not isinstance(task, PeriodicTask):
            assert tuple(task.autoretry_for) == TRANSIENT_ERRORS


def test_routes_and_schedule_come_from_the_declarations():
    assert route(SWEEP_PROVISIONING_TASK) == {"queue": SWEEP_QUEUE}
    assert route(REGISTER_TASK) == {"queue": "registry"}
    # A name this worker does not define goes where the client library routes it.
    assert route("registry.heartbeat_from_the_future") == {"queue": "registry"}
    schedule = beat_schedule(load({"PROVISION_SWEEP_INTERVAL": "40"}))
    assert schedule["sweep-provisioning"] == {
        "task": SWEEP_PROVISIONING_TASK,
        "schedule": 40.0,
        "args": (),
        "options": {"queue": SWEEP_QUEUE, "expires": 36.0},
    }


def test_any_task_on_the_base_is_timed_and_keeps_celerys_fast_path(app):
    from celery.app.trace import task_has_custom

    # Named outside `registry.`: the contract test lists every registry.* task.
    @app.task(name="test.plain_base_task", base=RegistryTask, max_retries=0)
    def plain(payload):
        if payload.get("fail"):
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
        return {"status": "done"}

    task = app.tasks["test.plain_base_task"]
    # Celery calls `run` directly unless __call__ is overridden (much cheaper per message).
    assert not task_has_custom(task, "__call__")
    assert task.apply(args=[{}]).get() == {"status": "done"}
    assert sample("registry_task_results_total", task=task.name, status="done") == 1
    with pytest.raises(sqlalchemy.exc.OperationalError):
        task.apply(args=[{"fail": True}]).get()
    assert sample("registry_task_results_total", task=task.name, status="retry") == 1
    assert sample("registry_task_duration_seconds_count", task=task.name) == 2
