"""Every sweep's plan is right at scale (CONTRACT §5: cost follows candidates, not the fleet).

On a seeded fleet (30,000 workspaces in one INSERT … SELECT generate_series, 1% of
them candidates of each sweep, plus 30,000 events, then ANALYZE), EXPLAIN each
statement of `registry.sweeps.plans` and check that it uses its intended index and
never reads `workspaces` (or, for the history statements, `structure_events`) with a
sequential scan. A future change that quietly turns a sweep into a fleet scan fails
here.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from registry.config import get_settings
from registry.sweeps.plans import (
    SweepStatement,
    explain,
    indexes_used,
    seq_scanned,
    sweep_statements,
)

pytestmark = pytest.mark.integration

FLEET = 30_000

# k = g % 100: 0-3 are the 1% candidates of the backstop, the remote pass, the
# provisioning timeout and hibernation; the rest is a realistic mix.
_SEED_WORKSPACES = text(
    """
    INSERT INTO workspaces (id, name, status, runtime, last_heartbeat_at, status_changed_at,
                            hibernation_idle_minutes, idle_since, active_tasks)
    SELECT gen_random_uuid(), 'plan-' || g,
           CASE WHEN k = 2 THEN 'provisioning'
                WHEN k BETWEEN 14 AND 17 THEN 'degraded'
                WHEN k BETWEEN 90 AND 94 THEN 'offline'
                WHEN k IN (95, 96) THEN 'hibernated'
                WHEN k = 97 THEN 'paused'
                WHEN k = 98 THEN 'removed'
                WHEN k = 99 THEN 'awaiting_agent'
                ELSE 'online' END,
           CASE WHEN k = 1 OR k BETWEEN 4 AND 13 OR k = 99 THEN 'external'
                ELSE 'langgraph' END,
           CASE WHEN k = 0 THEN now() - interval '15 minutes'
                WHEN k = 1 THEN now() - interval '150 seconds'
                WHEN k IN (2, 99) THEN NULL
                WHEN k BETWEEN 90 AND 98 THEN now() - interval '2 days'
                ELSE now() - random() * interval '25 seconds' END,
           CASE WHEN k = 2 THEN now() - interval '1 hour' ELSE now() - interval '1 day' END,
           CASE WHEN k = 3 THEN 5 END,
           CASE WHEN k = 3 THEN now() - interval '1 hour' END,
           0
    FROM generate_series(1, :n) AS g, LATERAL (SELECT g % 100 AS k) AS kk
    """
)

# Mostly old history, some recent liveness marks (1%), some recent other events.
_SEED_EVENTS = text(
    """
    INSERT INTO structure_events (event_type, workspace_id, payload, created_at)
    SELECT CASE WHEN g % 100 = 0 THEN 'WORKSPACE_OFFLINE' ELSE 'WORKSPACE_ONLINE' END,
           gen_random_uuid(),
           CASE WHEN g % 100 = 0
                THEN '{"reason": "liveness_expired", "previous_status": "online"}'::jsonb
                ELSE '{"recovered_from": "offline"}'::jsonb END,
           CASE WHEN g % 100 = 0 OR g % 10 = 1 THEN now() - random() * interval '2 minutes'
                ELSE now() - interval '100 days' + g * interval '1 second' END
    FROM generate_series(1, :n) AS g
    """
)


@pytest.fixture(scope="module")
def seeded(engine):
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE workspaces, structure_events, event_outbox CASCADE"))
        conn.execute(_SEED_WORKSPACES, {"n": FLEET})
        conn.execute(_SEED_EVENTS, {"n": FLEET})
        conn.execute(text("ANALYZE workspaces"))
        conn.execute(text("ANALYZE structure_events"))
        conn.execute(text("ANALYZE event_outbox"))
    yield engine
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE workspaces, structure_events, event_outbox CASCADE"))


STATEMENTS = {s.name: s for s in sweep_statements(get_settings())}


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_each_sweep_statement_uses_its_index_and_never_scans_the_fleet(seeded, name):
    statement: SweepStatement = STATEMENTS[name]
    with seeded.connect() as conn:
        plan = explain(conn, statement)
    used = indexes_used(plan)
    scanned = seq_scanned(plan)
    assert statement.table not in scanned, f"{name}: Seq Scan on {statement.table}\n{plan}"
    assert "workspaces" not in scanned, f"{name}: Seq Scan on workspaces\n{plan}"
    if statement.index is not None:
        assert statement.index in used, f"{name}: expected {statement.index}, used {used}"


def test_a_hibernation_claim_is_a_primary_key_lookup(seeded):
    # Through ix_workspaces_idle each claim would read every idle row.
    with seeded.connect() as conn:
        used = indexes_used(explain(conn, STATEMENTS["hibernation.claim"]))
    assert used == {"workspaces_pkey"}


def test_the_live_count_reads_no_workspace_row(seeded):
    with seeded.connect() as conn:
        plan = explain(conn, STATEMENTS["self_preservation.live_count"])
    assert "workspaces" not in {node.get("Relation Name") for node in _nodes(plan)}, (
        "the fleet size must come from the counts, never from the workspaces table"
    )


def test_the_catalog_covers_every_sweep():
    prefixes = {name.split(".")[0] for name in STATEMENTS}
    assert prefixes == {
        "self_preservation",
        "backstop",
        "health",
        "provisioning",
        "hibernation",
        "retention",
        "listener",
    }


def _nodes(plan):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)
