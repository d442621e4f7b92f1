"""The statements every sweep (and the self-preservation check) runs, for EXPLAIN.

CONTRACT §5: a sweep costs in proportion to its candidates, never a scan of the fleet.
That holds only while the planner picks the intended index, which a new column, a
reworded WHERE or a dropped index can quietly change. `SWEEP_STATEMENTS` lists each
statement with representative parameters and the index it must use; the plan tests
(tests/test_sweep_plans.py) and `bench/sweeps.py` EXPLAIN them on a seeded fleet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, TextClause, text

from registry.config import Settings
from registry.events.retention import PRUNE_BATCH_STATEMENT
from registry.liveness import expiry
from registry.liveness.selfpreservation.counts import LIVE_COUNT
from registry.liveness.selfpreservation.measuring import (
    AT_RISK,
    RECENTLY_MARKED,
    RECENTLY_UNREACHABLE,
    at_risk_params,
)
from registry.liveness.transitions import (
    LIVENESS_EXCLUDED,
    mark_unreachable_statement,
)
from registry.statuses import Status
from registry.sweeps import backstop, health, hibernation, provisioning

LIVE_INDEX = "ix_workspaces_live_heartbeat"


@dataclass(frozen=True)
class SweepStatement:
    name: str
    statement: TextClause
    params: dict[str, Any]
    index: str | None  # the index the plan must use; None: must not touch workspaces
    table: str = "workspaces"  # the table that must never be read sequentially


def _excluded(statuses: frozenset[Status]) -> list[str]:
    return sorted(str(s) for s in statuses)


def sweep_statements(settings: Settings) -> list[SweepStatement]:
    stale_after = settings.liveness_ttl_seconds + settings.backstop_grace_seconds
    remote_sql, remote_order = health.REMOTE_STALE_SQL[0]
    remote_null_sql, _ = health.REMOTE_STALE_SQL[1]
    some_ids = [UUID(int=1), UUID(int=2)]
    seen = [datetime.now(UTC)] * len(some_ids)
    return [
        SweepStatement(
            "self_preservation.at_risk", AT_RISK, at_risk_params(settings, 0.0), LIVE_INDEX
        ),
        SweepStatement(
            "self_preservation.recently_marked",
            RECENTLY_MARKED,
            {"window": settings.liveness_ttl_seconds},
            "ix_structure_events_liveness_marks",
            table="structure_events",
        ),
        SweepStatement(
            "self_preservation.recently_unreachable",
            RECENTLY_UNREACHABLE,
            {"window": settings.liveness_ttl_seconds},
            "ix_structure_events_liveness_marks",
            table="structure_events",
        ),
        SweepStatement("self_preservation.live_count", LIVE_COUNT, {}, None),
        SweepStatement(
            "listener.mark_expired",
            mark_unreachable_statement(expiry._EXPIRED_SQL),
            {
                "ids": some_ids,
                "fresh_seconds": settings.liveness_ttl_seconds / 2,
                "excluded": _excluded(LIVENESS_EXCLUDED),
                "limit": len(some_ids),
                "reason": "liveness_expired",
            },
            "workspaces_pkey",
        ),
        SweepStatement(
            "backstop.mark_stale",
            mark_unreachable_statement(backstop.STALE_SQL, order_sql=backstop.ORDER_SQL),
            {
                "stale_after": stale_after,
                "excluded": _excluded(LIVENESS_EXCLUDED),
                "limit": backstop.BATCH_SIZE,
                "reason": "liveness_expired",
            },
            LIVE_INDEX,
        ),
        SweepStatement(
            "health.remote_stale",
            mark_unreachable_statement(
                remote_sql, target=Status.AWAITING_AGENT, order_sql=remote_order
            ),
            {
                "stale_after": settings.remote_liveness_stale_after,
                "excluded": _excluded(health.REMOTE_EXCLUDED),
                "limit": health.BATCH_SIZE,
                "reason": "heartbeat_stale",
            },
            LIVE_INDEX,
        ),
        SweepStatement(
            "health.remote_never_heartbeated",
            mark_unreachable_statement(remote_null_sql, target=Status.AWAITING_AGENT),
            {
                "stale_after": settings.remote_liveness_stale_after,
                "excluded": _excluded(health.REMOTE_EXCLUDED),
                "limit": health.BATCH_SIZE,
                "reason": "heartbeat_stale",
            },
            LIVE_INDEX,
        ),
        SweepStatement(
            "health.container_page",
            health.CONTAINER_CANDIDATES,
            {"after": UUID(int=0), "until": health.MAX_UUID, "limit": health.BATCH_SIZE},
            "workspaces_pkey",
        ),
        SweepStatement(
            "health.mark_gone",
            mark_unreachable_statement(health.GONE_SQL, target=Status.OFFLINE),
            {
                "ids": some_ids,
                "seen": seen,
                "excluded": _excluded(health.CONTAINER_EXCLUDED),
                "limit": len(some_ids),
                "reason": "container_gone",
            },
            "workspaces_pkey",
        ),
        SweepStatement(
            "provisioning.fail_timed_out",
            provisioning.FAIL_TIMED_OUT,
            provisioning.fail_params(settings.provision_timeout_seconds, 500),
            "ix_workspaces_provisioning",
        ),
        SweepStatement(
            "hibernation.find_candidates",
            hibernation.FIND_CANDIDATES,
            {"limit": hibernation.DEFAULT_LIMIT},
            "ix_workspaces_idle",
        ),
        SweepStatement(
            "hibernation.claim",
            hibernation.CLAIM,
            {"id": some_ids[0]},
            "workspaces_pkey",
        ),
        SweepStatement(
            "hibernation.find_stuck",
            hibernation.FIND_STUCK,
            {"stuck_after": hibernation.DEFAULT_STUCK_AFTER_SECONDS, "limit": 100},
            "ix_workspaces_status",
        ),
        SweepStatement(
            "retention.prune_batch",
            PRUNE_BATCH_STATEMENT,
            {"days": max(settings.events_retention_days, 1), "limit": 5000},
            "ix_structure_events_created_at",
            table="structure_events",
        ),
    ]


def explain(conn: Connection, statement: SweepStatement) -> dict[str, Any]:
    """The planner's plan (EXPLAIN without ANALYZE: nothing is executed) as a dict."""
    raw = conn.execute(
        text("EXPLAIN (FORMAT JSON) " + statement.statement.text), statement.params
    ).scalar_one()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return dict(plan[0]["Plan"])


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def indexes_used(plan: dict[str, Any]) -> set[str]:
    return {n["Index Name"] for n in plan_nodes(plan) if "Index Name" in n}


def seq_scanned(plan: dict[str, Any]) -> set[str]:
    """Tables read by a sequential scan."""
    return {n["Relation Name"] for n in plan_nodes(plan) if n["Node Type"] == "Seq Scan"}
