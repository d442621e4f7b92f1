"""Flapping (CONTRACT §13): flagged at FLAP_THRESHOLD changes, unflagged after a quiet
window, and FLAP_DAMPING's hold of a flapping workspace's recovery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from ingest_helpers import heartbeat_now, run_message, run_sweep, workspace
from insight_helpers import age, clean_insight, events_of, failing, fleet, healthy
from maintenance_helpers import environment
from sqlalchemy import Engine

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, SWEEP_INSIGHT_TASK

pytestmark = pytest.mark.integration


@pytest.fixture
def insight_db(db: Engine) -> Iterator[Engine]:
    yield from clean_insight(db)


def flip(ws: str, times: int) -> None:
    """`times` status changes: online → degraded → online → … (without damping)."""
    for _ in range(times):
        if workspace_status(ws) == "online":
            heartbeat_now(ws, error_rate=0.9, sample_error="boom")
        else:
            heartbeat_now(ws, error_rate=0.0)


def workspace_status(ws: str) -> str:
    from registry.db import get_engine

    return workspace(get_engine(), ws).status


def test_flagged_at_the_threshold_once_and_unflagged_after_a_quiet_window(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    (ws,) = fleet(insight_db, 1)
    flip(ws, 5)
    assert workspace(insight_db, ws).flapping is False
    assert events_of(insight_db, "WORKSPACE_FLAPPING") == []
    flip(ws, 1)  # the sixth change, in the same transaction as the flag
    row = workspace(insight_db, ws)
    assert row.flapping is True
    (flagged,) = events_of(insight_db, "WORKSPACE_FLAPPING")
    assert (flagged.ws, flagged.payload) == (ws, {"changes": 6, "window": 600})
    flip(ws, 4)  # still flapping: no second event
    assert len(events_of(insight_db, "WORKSPACE_FLAPPING")) == 1

    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["stable"] == 0
    age(
        insight_db,
        "UPDATE structure_events SET created_at = created_at - interval '601 seconds' "
        "WHERE workspace_id = :id",
        id=ws,
    )
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["stable"] == 1
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["stable"] == 0
    assert workspace(insight_db, ws).flapping is False
    (stable,) = events_of(insight_db, "WORKSPACE_STABLE")
    assert (stable.ws, stable.payload) == (ws, {"quiet_seconds": 600})


def test_a_degradation_completing_the_count_flags_in_its_incident_statement(
    insight_db: Engine,
) -> None:
    # A batch with degradations counts its flapping in the incident statement.
    (ws,) = fleet(insight_db, 1)
    flip(ws, 1)  # degraded, then out of the window: it no longer counts
    age(
        insight_db,
        "UPDATE structure_events SET created_at = created_at - interval '601 seconds' "
        "WHERE workspace_id = :id",
        id=ws,
    )
    flip(ws, 5)
    assert workspace(insight_db, ws).flapping is False
    flip(ws, 1)  # the sixth change in the window is a degradation
    assert workspace_status(ws) == "degraded"
    assert workspace(insight_db, ws).flapping is True
    (flagged,) = events_of(insight_db, "WORKSPACE_FLAPPING")
    assert (flagged.ws, flagged.payload) == (ws, {"changes": 6, "window": 600})
    assert events_of(insight_db, "REGISTRY_INCIDENT") == []


def test_changes_older_than_the_window_do_not_count(insight_db: Engine) -> None:
    (ws,) = fleet(insight_db, 1)
    flip(ws, 5)
    age(
        insight_db,
        "UPDATE structure_events SET created_at = created_at - interval '601 seconds' "
        "WHERE workspace_id = :id",
        id=ws,
    )
    flip(ws, 1)
    row = workspace(insight_db, ws)
    assert row.flapping is False


def test_a_batch_with_many_changes_of_one_workspace(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    (ws,) = fleet(insight_db, 1)
    items = [failing(ws, "boom") if n % 2 == 0 else healthy(ws) for n in range(6)]
    run_message(celery_app, HEARTBEAT_BATCH_TASK, {"heartbeats": items})
    assert workspace(insight_db, ws).flapping is True
    assert len(events_of(insight_db, "WORKSPACE_FLAPPING")) == 1


def test_damping_off_by_default_recovers_at_once(insight_db: Engine) -> None:
    (ws,) = fleet(insight_db, 1)
    flip(ws, 7)  # flapping, left degraded
    assert workspace(insight_db, ws).status == "degraded"
    heartbeat_now(ws, error_rate=0.0)
    assert workspace(insight_db, ws).status == "online"


def test_damping_holds_a_flapping_recovery_until_healthy_for_the_hold(insight_db: Engine) -> None:
    (ws, calm) = fleet(insight_db, 2)
    with environment(FLAP_DAMPING="true", FLAP_HOLD_SECONDS="60"):
        flip(ws, 7)  # online first: the seventh change (degraded) is never held
        assert workspace(insight_db, ws).status == "degraded"
        heartbeat_now(ws, error_rate=0.0)
        row = workspace(insight_db, ws)
        assert (row.status, row.flap_hold_since is not None) == ("degraded", True)
        heartbeat_now(ws, error_rate=0.0)  # healthy, but not for 60 s yet
        assert workspace(insight_db, ws).status == "degraded"
        heartbeat_now(ws, error_rate=0.3)  # not healthy: the hold starts again
        assert workspace(insight_db, ws).flap_hold_since is None
        heartbeat_now(ws, error_rate=0.0)
        age(
            insight_db,
            "UPDATE workspaces SET flap_hold_since = now() - interval '61 seconds' WHERE id = :id",
            id=ws,
        )
        heartbeat_now(ws, error_rate=0.0)
        row = workspace(insight_db, ws)
        assert (row.status, row.flap_hold_since) == ("online", None)
        # A workspace that is not flapping is never held.
        heartbeat_now(calm, error_rate=0.9, sample_error="x")
        heartbeat_now(calm, error_rate=0.0)
        assert workspace(insight_db, calm).status == "online"
