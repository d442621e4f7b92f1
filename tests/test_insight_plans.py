"""The fleet-insight reads' plans at scale (CONTRACT §13), checked as the sweeps' are:
on a seeded history (20,000 workspaces, 200,000 events over 30 days, ANALYZEd),
`history` reads one workspace's events by its index, never the table; the report's
window of status events comes from the time index when the window is a small part of
the history; the incident count reads its signals by key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from registry.insight import history, report
from registry.sweeps.plans import SweepStatement, explain, indexes_used, seq_scanned

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded(engine: Engine) -> Iterator[str]:
    with engine.begin() as conn:
        conn.execute(
            text("TRUNCATE workspaces, structure_events, event_outbox, incident_signals CASCADE")
        )
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status) SELECT gen_random_uuid(), 'p-' || g, "
                "'online' FROM generate_series(1, 20000) g"
            )
        )
        conn.execute(
            text(
                """
                INSERT INTO structure_events (event_type, workspace_id, payload, created_at)
                WITH ids AS (SELECT array_agg(id) AS a FROM workspaces)
                SELECT 'WORKSPACE_ONLINE', ids.a[1 + g % 20000], '{"recovered_from": "offline"}',
                       now() - (g % 30) * interval '1 day' - random() * interval '1 day'
                FROM generate_series(1, 200000) g, ids
                """
            )
        )
        subject = str(conn.execute(text("SELECT id FROM workspaces LIMIT 1")).scalar_one())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE workspaces"))
        conn.execute(text("VACUUM ANALYZE structure_events"))
    yield subject
    with engine.begin() as conn:
        conn.execute(
            text("TRUNCATE workspaces, structure_events, event_outbox, incident_signals CASCADE")
        )


def plan_of(engine: Engine, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    with engine.connect() as conn:
        return explain(conn, SweepStatement("insight", statement, params, ""))


def test_history_reads_one_workspace_by_its_index(engine: Engine, seeded: str) -> None:
    # The window of a 30-day history, and the event before a 1-day window (most of
    # the table lies before it: the time index would be the wrong way in).
    for statement, days in ((history._EVENTS, 30), (history._EVENTS, 1), (history._BEFORE, 1)):
        params = {
            "id": seeded,
            "since": datetime.now(UTC) - timedelta(days=days),
            "types": history.STATUS_EVENT_TYPES,
        }
        plan = plan_of(engine, statement, params)
        assert indexes_used(plan) == {"ix_structure_events_workspace"}
        assert "structure_events" not in seq_scanned(plan)


def test_the_registration_trigger_reads_one_workspace_by_its_index(
    engine: Engine, seeded: str
) -> None:
    """The lookback of migration 0007's trigger, as its function runs it: with the
    workspace and the time as parameters, in the plan the function caches (generic)."""
    with engine.connect() as conn:
        source = conn.execute(
            text("SELECT prosrc FROM pg_proc WHERE proname = 'structure_events_previous_status'")
        ).scalar_one()
        lookback = source[source.index("SELECT") : source.index(";")]
        lookback = lookback.replace("INTO NEW.previous_status", "")
        lookback = lookback.replace("NEW.workspace_id", "$1").replace("NEW.created_at", "$2")
        conn.execute(text("SET plan_cache_mode = force_generic_plan"))
        conn.exec_driver_sql(f"PREPARE lookback (uuid, timestamptz) AS {lookback}")
        raw = conn.exec_driver_sql(
            "EXPLAIN (FORMAT JSON) EXECUTE lookback (%(ws)s, now())", {"ws": seeded}
        ).scalar_one()
        conn.exec_driver_sql("DEALLOCATE lookback")
        conn.execute(text("RESET plan_cache_mode"))
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    assert indexes_used(plan) == {"ix_structure_events_workspace"}
    assert "structure_events" not in seq_scanned(plan)


def test_report_reads_the_window_by_time(engine: Engine, seeded: str) -> None:
    # One part of the report's split, as it runs (a range of ids).
    lo, hi = report.id_ranges(2)[0]
    params = {
        "since": datetime.now(UTC) - timedelta(hours=24),
        "types": history.STATUS_EVENT_TYPES,
        "limit": 10,
        "now_us": 86_400_000_000,
        "lo": lo,
        "hi": hi,
    }
    plan = plan_of(engine, report._MOVING, params)
    assert "ix_structure_events_created_at" in indexes_used(plan)
    assert "structure_events" not in seq_scanned(plan)


def test_self_preservation_episodes_skip_the_status_events(engine: Engine, seeded: str) -> None:
    params = {"since": datetime.now(UTC) - timedelta(days=30)}
    plan = plan_of(engine, report._SELF_PRESERVATION, params)
    assert "ix_structure_events_workspace" in indexes_used(plan)
    assert "structure_events" not in seq_scanned(plan)


def test_incident_window_is_read_by_signature(engine: Engine, seeded: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO incident_signals (kind, key, workspace_id, at) "
                "SELECT 'shared_error', 'sig ' || (g % 500), gen_random_uuid(), "
                "now() - random() * interval '1 hour' FROM generate_series(1, 50000) g"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE incident_signals"))
    from registry.insight.incidents import _NOTE
    from registry.insight.keys import SHARED_ERROR

    plan = plan_of(
        engine,
        _NOTE[SHARED_ERROR],
        {
            "keys": ["sig 1"],
            "ws": ["00000000-0000-0000-0000-000000000001"],
            "samples": [None],
            "window": 300,
            "min_members": 5,
            "sample_max": 512,
            "verify": False,
        },
    )
    assert "ix_incident_signals_key" in indexes_used(plan)
    assert "incident_signals" not in seq_scanned(plan)


def test_flap_count_reads_each_workspace_from_the_window(engine: Engine, seeded: str) -> None:
    from registry.insight.flapping import _NOTE_CHANGES, SLACK_SECONDS, STATUS_TYPES

    plan = plan_of(
        engine,
        _NOTE_CHANGES,
        {
            "flap_ids": [seeded],
            "flap_window": 600,
            "slack": SLACK_SECONDS,
            "types": STATUS_TYPES,
            "threshold": 6,
            "pending": True,
            "verify": False,
        },
    )
    assert {"ix_structure_events_workspace", "ix_structure_events_created_at"} <= indexes_used(plan)
    assert not seq_scanned(plan) & {"structure_events", "workspaces"}
