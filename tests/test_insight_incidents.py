"""Incidents (CONTRACT §13): correlated degradations and unreachable groups, end to end.

Heartbeats go through a real worker (registry.heartbeat_batch messages); the insight
sweep runs as beat would send it; time is moved by writing timestamps into the past.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from ingest_helpers import run_message, run_sweep
from insight_helpers import (
    age,
    clean_insight,
    events_of,
    failing,
    fleet,
    healthy,
    incident_events,
    incidents,
)
from maintenance_helpers import run_concurrently
from sqlalchemy import Engine

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, SWEEP_INSIGHT_TASK
from registry.config import get_settings
from registry.insight.signature import signature
from registry.liveness.transitions import mark_unreachable
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration

RATE_LIMIT = "provider rate limit: 429 Too Many Requests (request req_{n:08d}x, retry in {n}s)"


@pytest.fixture
def insight_db(db: Engine) -> Iterator[Engine]:
    yield from clean_insight(db)


def beat(celery_app: Celery, items: list[dict[str, Any]]) -> dict[str, Any]:
    return run_message(celery_app, HEARTBEAT_BATCH_TASK, {"heartbeats": items})


def test_five_degradations_with_one_signature_open_exactly_one_incident(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    ids = fleet(insight_db, 7)
    # Four first, one message each: below the threshold, nothing opens.
    for n, ws in enumerate(ids[:4]):
        beat(celery_app, [failing(ws, RATE_LIMIT.format(n=n))])
    assert incidents(insight_db) == []
    beat(celery_app, [failing(ids[4], RATE_LIMIT.format(n=4))])

    (incident,) = incidents(insight_db)
    assert incident.kind == "shared_error"
    assert incident.signature == signature(RATE_LIMIT.format(n=0))
    assert (incident.members, incident.peak_members, incident.resolved_at) == (5, 5, None)
    (opened,) = incident_events(insight_db)
    assert opened == {
        "state": "opened",
        "incident_id": incident.id,
        "kind": "shared_error",
        "signature": incident.signature,
        "sample_error": RATE_LIMIT.format(n=4),
        "members": 5,
    }
    degraded = events_of(insight_db, "WORKSPACE_DEGRADED")
    # The fifth member's event is recorded with the opening and carries the incident.
    assert degraded[-1].payload["incident_id"] == incident.id
    assert all("incident_id" not in e.payload for e in degraded[:4])
    assert all("signature" not in e.payload for e in degraded)  # the original's payloads

    # A sixth and seventh join: tagged, no second incident, no event before 30 s.
    beat(celery_app, [failing(ws, RATE_LIMIT.format(n=9)) for ws in ids[5:]])
    assert [
        e.payload.get("incident_id") for e in events_of(insight_db, "WORKSPACE_DEGRADED")[-2:]
    ] == [
        incident.id,
        incident.id,
    ]
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["incidents"] == {}
    assert len(incident_events(insight_db)) == 1
    # 30 s later (moved back), one `updated`; a second sweep right after: nothing.
    age(insight_db, "UPDATE incidents SET announced_at = now() - interval '31 seconds'")
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["incidents"] == {"updated": 1}
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["incidents"] == {}
    updated = incident_events(insight_db)[-1]
    assert (updated["state"], updated["members"], updated["peak_members"]) == ("updated", 7, 7)

    # Recovery: all back online. Not resolved until a quiet window has passed.
    beat(celery_app, [healthy(ws) for ws in ids])
    run_sweep(celery_app, SWEEP_INSIGHT_TASK)
    assert incidents(insight_db)[0].resolved_at is None
    age(
        insight_db,
        "UPDATE incidents SET last_seen_at = now() - interval '301 seconds', "
        "opened_at = now() - interval '900 seconds'",
    )
    age(
        insight_db,
        "UPDATE incident_signals SET at = at - interval '301 seconds'",
    )
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["incidents"] == {"resolved": 1}
    resolved = incident_events(insight_db)[-1]
    assert resolved["state"] == "resolved"
    assert resolved["peak_members"] == 7 and resolved["members"] == 0
    assert 899 <= resolved["duration_seconds"] <= 905
    assert incidents(insight_db)[0].resolved_at is not None
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["incidents"] == {}
    assert len(incident_events(insight_db)) == 3


def test_two_signatures_make_two_incidents_and_fewer_members_none(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    ids = fleet(insight_db, 14)
    items = [failing(ws, RATE_LIMIT.format(n=n)) for n, ws in enumerate(ids[:5])]
    items += [
        failing(ws, f"connection to 10.0.0.{n}:5432 refused") for n, ws in enumerate(ids[5:10])
    ]
    items += [failing(ws, f"disk full on /var/data/{n}") for n, ws in enumerate(ids[10:14])]
    beat(celery_app, items)
    found = sorted(i.signature for i in incidents(insight_db))
    assert found == sorted([signature(RATE_LIMIT.format(n=1)), "connection to <num>:<num> refused"])
    assert len(incident_events(insight_db)) == 2


def test_a_single_degradation_opens_none(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    (ws,) = fleet(insight_db, 1)
    beat(celery_app, [failing(ws, "boom")])
    assert incidents(insight_db) == []
    assert "incident_id" not in events_of(insight_db, "WORKSPACE_DEGRADED")[0].payload


def test_signals_outside_the_window_do_not_count(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    ids = fleet(insight_db, 5)
    beat(celery_app, [failing(ws, "boom 1") for ws in ids[:4]])
    age(
        insight_db,
        "UPDATE incident_signals SET at = at - interval '301 seconds'",
    )
    beat(celery_app, [failing(ids[4], "boom 2")])
    assert incidents(insight_db) == []


def test_concurrent_workers_open_one_incident(insight_db: Engine, celery_app: Celery) -> None:
    """Ten transactions at once, each degrading 1 workspace of one signature (the
    threshold is 5): every interleaving opens exactly one incident and one event."""
    from ingest_helpers import heartbeat_now

    for word in ("alpha", "beta", "gamma"):  # one signature per round
        ids = fleet(insight_db, 10)
        pending = list(ids)

        def one(pending: list[str] = pending, word: str = word) -> None:
            ws = pending.pop()
            heartbeat_now(ws, error_rate=0.9, sample_error=f"quota {word} exceeded for key {ws}")

        run_concurrently(10, one)
        open_now = [i for i in incidents(insight_db) if i.resolved_at is None]
        assert len(open_now) == 1
        assert open_now[0].signature == f"quota {word} exceeded for key <uuid>"
        assert len([e for e in incident_events(insight_db) if e["state"] == "opened"]) == 1
        age(insight_db, "UPDATE incidents SET resolved_at = now()")  # next round afresh
        age(insight_db, "DELETE FROM structure_events WHERE event_type = 'REGISTRY_INCIDENT'")


def test_group_unreachable_is_keyed_by_parent(insight_db: Engine) -> None:
    (parent,) = fleet(insight_db, 1)
    (other,) = fleet(insight_db, 1)
    children = fleet(insight_db, 6, parent=parent)
    strays = fleet(insight_db, 4, parent=other)
    with unit_of_work() as uow:
        marked = mark_unreachable(
            uow,
            reason="liveness_expired",
            candidates_sql="w.id = ANY(CAST(:ids AS uuid[]))",
            params={"ids": children + strays},
        )
    assert len(marked) == 10
    (incident,) = incidents(insight_db)
    assert (incident.kind, incident.key, str(incident.parent_id)) == (
        "group_unreachable",
        parent,
        parent,
    )
    (opened,) = incident_events(insight_db)
    assert opened["kind"] == "group_unreachable" and opened["parent_id"] == parent
    assert opened["members"] == 6


def test_an_open_incident_is_not_opened_twice_by_a_later_batch(
    insight_db: Engine, celery_app: Celery, worker: Any
) -> None:
    ids = fleet(insight_db, 10)
    beat(celery_app, [failing(ws, "model overloaded") for ws in ids[:5]])
    beat(celery_app, [failing(ws, "model overloaded") for ws in ids[5:]])
    assert len(incidents(insight_db)) == 1
    assert len(incident_events(insight_db)) == 1
    assert {e.payload["incident_id"] for e in events_of(insight_db, "WORKSPACE_DEGRADED")} == {
        incidents(insight_db)[0].id
    }


def test_no_status_change_sends_no_bookkeeping(insight_db: Engine, celery_app: Celery) -> None:
    """A healthy heartbeat of an online workspace leaves every insight table alone."""
    from ingest_helpers import heartbeat_now

    (ws,) = fleet(insight_db, 1)
    heartbeat_now(ws, error_rate=0.0)
    with insight_db.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT flap_hold_since, flapping FROM workspaces WHERE id = '{ws}'"
        ).one()
        incidents_now = conn.exec_driver_sql("SELECT count(*) FROM incidents").scalar_one()
    assert (row.flap_hold_since, row.flapping, incidents_now) == (None, False, 0)
    assert get_settings().incident_min_members == 5
    assert uuid.UUID(ws)


def test_two_sweeps_at_once_resolve_once(insight_db: Engine) -> None:
    """Two beats' sweeps racing on a quiet incident and on a growing one: one event each."""
    from registry.insight.sweep import sweep_insight

    ids = fleet(insight_db, 12)
    beat_items = [failing(ws, "upstream 502") for ws in ids[:5]]
    beat_items += [failing(ws, "vector store 503 timeout") for ws in ids[5:10]]
    from ingest_helpers import heartbeat_now

    for item in beat_items:
        heartbeat_now(item["workspace_id"], error_rate=0.9, sample_error=item["sample_error"])
    for ws in ids[:5]:
        heartbeat_now(ws, error_rate=0.0)
    for ws in ids[10:]:
        heartbeat_now(ws, error_rate=0.9, sample_error="vector store 504 timeout")
    age(
        insight_db,
        "UPDATE incidents SET last_seen_at = now() - interval '1 hour', "
        "announced_at = now() - interval '1 minute'",
    )
    age(
        insight_db,
        "UPDATE incident_signals SET at = at - interval '1 hour' WHERE key = 'upstream <num>'",
    )

    run_concurrently(4, lambda: sweep_insight(get_settings()))
    states = sorted(e["state"] for e in incident_events(insight_db))
    assert states == ["opened", "opened", "resolved", "updated"]
