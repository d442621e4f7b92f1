"""Status transitions: the heartbeat table (CONTRACT §4.2 step 7) and "mark unreachable".

These are the only two places that decide a workspace's liveness status. Every path
that marks a workspace unreachable (liveness expiry, the backstop, the health sweep)
calls `mark_unreachable`; the heartbeat path asks `heartbeat_transition`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import TextClause, text

from registry import metrics
from registry.events.outbox import (
    RECORDED_COLUMNS,
    insert_recorded_events,
    recorded_events,
    recording_ctes,
)
from registry.insight.recording import after_marking
from registry.liveness.keys import clear_many_workspace_keys
from registry.liveness.selfpreservation.counts import deltas_cte, records_its_deltas
from registry.statuses import EXTERNAL_RUNTIME, UNREACHABLE_EVENT, EventType, Status
from registry.uow import UnitOfWork

# How long a registration refused after auth keeps degrading the workspace (§12).
REGISTER_FAILURE_WINDOW_SECONDS = 5 * 60
DEGRADE_ERROR_RATE = 0.5
RECOVER_ERROR_RATE = 0.1
WEDGED = "wedged"


@dataclass(frozen=True)
class HeartbeatFacts:
    """What a heartbeat says that the transition rules look at."""

    runtime_state: str
    error_rate: float
    sample_error: str | None
    native_status_mgmt: bool  # runtime_metadata.capabilities.status_mgmt is true
    # A registration was refused after its token was accepted less than
    # REGISTER_FAILURE_WINDOW ago (CONTRACT §12): the agent runs but cannot be reached
    # as it asked to be, so it is not healthy whatever its error rate says.
    register_failing: bool = False


@dataclass(frozen=True)
class HeartbeatRule:
    from_status: Status
    to_status: Status
    event: EventType
    applies: Callable[[HeartbeatFacts], bool]
    payload: Callable[[HeartbeatFacts], dict[str, Any]]


def _recovered(status: Status) -> Callable[[HeartbeatFacts], dict[str, Any]]:
    return lambda _facts: {"recovered_from": str(status)}


# First matching rule wins; at most one transition per heartbeat.
HEARTBEAT_RULES: tuple[HeartbeatRule, ...] = (
    HeartbeatRule(
        Status.ONLINE,
        Status.DEGRADED,
        EventType.WORKSPACE_DEGRADED,
        lambda f: f.runtime_state == WEDGED,
        lambda f: {"runtime_state": f.runtime_state, "sample_error": f.sample_error},
    ),
    HeartbeatRule(
        Status.ONLINE,
        Status.DEGRADED,
        EventType.WORKSPACE_DEGRADED,
        lambda f: f.error_rate >= DEGRADE_ERROR_RATE and not f.native_status_mgmt,
        lambda f: {"error_rate": f.error_rate, "sample_error": f.sample_error},
    ),
    HeartbeatRule(
        Status.ONLINE,
        Status.DEGRADED,
        EventType.WORKSPACE_DEGRADED,
        lambda f: f.register_failing,
        lambda f: {"register_failure": True, "sample_error": f.sample_error},
    ),
    HeartbeatRule(
        Status.DEGRADED,
        Status.ONLINE,
        EventType.WORKSPACE_ONLINE,
        lambda f: (
            f.error_rate < RECOVER_ERROR_RATE
            and f.runtime_state == ""
            and not f.native_status_mgmt
            and not f.register_failing  # a recent register failure blocks the recovery
        ),
        _recovered(Status.DEGRADED),
    ),
    HeartbeatRule(
        Status.OFFLINE,
        Status.ONLINE,
        EventType.WORKSPACE_ONLINE,
        lambda _f: True,
        _recovered(Status.OFFLINE),
    ),
    HeartbeatRule(
        Status.PROVISIONING,
        Status.ONLINE,
        EventType.WORKSPACE_ONLINE,
        lambda _f: True,
        _recovered(Status.PROVISIONING),
    ),
    # Unconditional since the original's newest registry (CONTRACT §12): an agent that
    # heartbeats with the workspace's token is connected, registered before or not.
    HeartbeatRule(
        Status.AWAITING_AGENT,
        Status.ONLINE,
        EventType.WORKSPACE_ONLINE,
        lambda _f: True,
        _recovered(Status.AWAITING_AGENT),
    ),
    # A provisioning timeout is a guess that the container is stuck; a heartbeat proves
    # the agent came up after all (CONTRACT §12).
    HeartbeatRule(
        Status.FAILED,
        Status.ONLINE,
        EventType.WORKSPACE_ONLINE,
        lambda _f: True,
        _recovered(Status.FAILED),
    ),
)


def heartbeat_transition(current: str, facts: HeartbeatFacts) -> HeartbeatRule | None:
    for rule in HEARTBEAT_RULES:
        if rule.from_status == current and rule.applies(facts):
            return rule
    return None


# ---------------------------------------------------------------------------
# Mark unreachable

# Statuses the liveness paths never touch (CONTRACT §5, liveness expiry).
LIVENESS_EXCLUDED: frozenset[Status] = frozenset(
    {Status.REMOVED, Status.PAUSED, Status.HIBERNATING, Status.HIBERNATED}
)

# The status an unreachable workspace lands in: external agents re-register from the
# operator's machine (awaiting_agent); container-backed ones need a restart (offline).
BY_RUNTIME = (
    f"CASE WHEN w.runtime = '{EXTERNAL_RUNTIME}' THEN '{Status.AWAITING_AGENT}' "
    f"ELSE '{Status.OFFLINE}' END"
)


@dataclass(frozen=True)
class Unreachable:
    workspace_id: UUID
    previous_status: str
    new_status: str


_STATUS_OF_EVENT: dict[EventType, str] = {e: str(s) for s, e in UNREACHABLE_EVENT.items()}
_EVENT_TYPE_SQL = (
    "CASE c.status "
    + " ".join(f"WHEN '{status}' THEN '{event}'" for status, event in UNREACHABLE_EVENT.items())
    + " END"
)


def mark_unreachable_statement(
    candidates_sql: str, *, target: Status | None = None, order_sql: str | None = None
) -> TextClause:
    """The one statement `mark_unreachable` runs (also what the plan tests EXPLAIN).

    Claims the batch, updates it, records one event per changed row in
    structure_events and event_outbox, and the batch's status-count deltas (run it
    under `records_its_deltas`): one UPDATE … RETURNING and one INSERT per table for
    the whole batch, in one round trip, with no per-row parameters to send.
    Parameters: the caller's, plus `:excluded` (statuses), `:limit` and `:reason`.
    """
    target_sql = f"'{target}'" if target else BY_RUNTIME
    order = f"ORDER BY {order_sql}" if order_sql else ""
    return text(
        f"""
        WITH cand AS (
            SELECT w.id, w.ctid, w.status AS previous_status
            FROM workspaces w
            WHERE ({candidates_sql})
              AND w.status <> ALL(:excluded)
              AND w.status <> {target_sql}
            {order}
            LIMIT :limit
            -- A row locked by a heartbeat in flight is alive: skip it rather than wait.
            -- The lock re-reads a row committed meanwhile and re-tests this WHERE.
            FOR UPDATE OF w SKIP LOCKED
        ), changed AS (
            UPDATE workspaces w
            SET status = {target_sql}, updated_at = now()
            FROM cand
            WHERE w.id = cand.id
              -- The locked rows' own addresses (we hold their locks, so they stay put):
              -- the batch is fetched by TID, no index descent per row, and the whole
              -- table is never hashed against it.
              AND w.ctid = ANY(ARRAY(SELECT ctid FROM cand))
            RETURNING w.id, cand.previous_status, w.status
        ), {deltas_cte("changed")}, {
            recording_ctes(
                "changed",
                _EVENT_TYPE_SQL,
                "jsonb_build_object('reason', CAST(:reason AS text), "
                "'previous_status', c.previous_status)",
            )
        }
        -- Only rows really changed get an event. Everything the caller needs is in
        -- the events: no join back to `changed` (the planner cannot size CTEs and
        -- would nest-loop the batch against itself).
        SELECT {RECORDED_COLUMNS} FROM ev
        """
    )


def mark_unreachable(
    uow: UnitOfWork,
    *,
    reason: str,
    candidates_sql: str,
    params: dict[str, Any] | None = None,
    excluded: Collection[Status] = LIVENESS_EXCLUDED,
    target: Status | None = None,
    limit: int = 1000,
    order_sql: str | None = None,
) -> list[Unreachable]:
    """Move the matching workspaces to their unreachable status; one event per change.

    `candidates_sql` is a boolean SQL condition over `w` (the workspaces row) chosen by
    the caller (e.g. "w.id = :id", or a stale-heartbeat test); it is re-checked inside
    the UPDATE's row lock, so a heartbeat that landed meanwhile wins. `target` forces
    a status (container gone → offline); by default it follows the runtime. Rows
    already in their target, or in an excluded status, are left alone. `order_sql`
    (e.g. the candidate index's column) lets the scan stop after `limit` rows instead
    of reading every candidate to sort them.

    Set-based (see `mark_unreachable_statement`); the events are published and the
    Redis keys cleared after the commit, transition metrics counted after it too.
    """
    sql = mark_unreachable_statement(candidates_sql, target=target, order_sql=order_sql)
    bound = {
        **(params or {}),
        "excluded": [str(s) for s in excluded],
        "limit": limit,
        "reason": reason,
    }
    with records_its_deltas(uow.conn):
        events = recorded_events(uow.conn.execute(sql, bound).all())
    changed = [
        Unreachable(e.workspace_id, e.payload["previous_status"], _STATUS_OF_EVENT[e.type])
        for e in events
    ]
    if not changed:
        return changed
    uow.recorded_events.extend(events)
    # Incident and flapping bookkeeping of these changes, in this transaction (§13).
    extra = after_marking(uow.conn, [str(c.workspace_id) for c in changed])
    uow.recorded_events.extend(insert_recorded_events(uow.conn, extra))
    ids = [c.workspace_id for c in changed]
    uow.on_commit(lambda pipe: clear_many_workspace_keys(pipe, ids))
    moves = Counter((c.previous_status, c.new_status) for c in changed)
    uow.after_commit(
        lambda: [metrics.record_transition(old, new, n) for (old, new), n in moves.items()]
    )
    return changed
