"""Apply heartbeats (CONTRACT §4.2), a list at a time.

One batch costs a fixed number of statements whatever its size: one SELECT that
locks the rows and reads their tokens, one executemany UPDATE for plain heartbeats,
one for heartbeats that change the status, one INSERT per recorded event (rare),
and one Redis pipeline after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any
from uuid import UUID

from sqlalchemy import TextClause, text

from registry import metrics
from registry.config import get_settings
from registry.ingestion.payloads import MAX_SENT_AT_SKEW_SECONDS, HeartbeatPayload
from registry.ingestion.tokens import (
    LAST_USED_RESOLUTION_SECONDS,
    UNAUTHORIZED_ERROR,
    hash_token,
    is_authorized,
    touch_tokens,
)
from registry.liveness.keys import set_liveness
from registry.liveness.transitions import HeartbeatFacts, heartbeat_transition
from registry.outcomes import Ignored, MessageRefused, Rejected, Unauthorized
from registry.statuses import EventType, Status
from registry.uow import UnitOfWork, broadcast_event_on_commit, record_event_on_commit

_LOCK_AND_READ = text(
    """
    SELECT hb.ord, w.id, w.status, w.current_task, now() AS db_now,
           w.last_heartbeat_sent_at AS last_sent_at,
           w.registered_at IS NOT NULL AS registered_before,
           t.has_live, t.matched_id, t.touch_due
    FROM unnest(CAST(:ids AS uuid[]), CAST(:hashes AS text[])) WITH ORDINALITY AS hb(id, hash, ord)
    JOIN workspaces w ON w.id = hb.id
    LEFT JOIN LATERAL (
        SELECT count(*) > 0 AS has_live,
               (array_agg(tk.id) FILTER (WHERE tk.token_hash = hb.hash))[1] AS matched_id,
               -- last_used_at is refreshed at most once per resolution: most heartbeats
               -- then cost no write to the tokens table at all.
               coalesce(bool_or(tk.token_hash = hb.hash AND (tk.last_used_at IS NULL
                   OR tk.last_used_at < now() - make_interval(secs => :touch_after))), false)
                   AS touch_due
        FROM workspace_auth_tokens tk
        WHERE tk.workspace_id = w.id AND tk.revoked_at IS NULL
    ) t ON true
    -- Locks in id order, so two batches touching the same workspaces cannot deadlock;
    -- sweeps use SKIP LOCKED and simply pass over a row a heartbeat holds.
    ORDER BY w.id
    FOR UPDATE OF w
    """
)

_SET_HEARTBEAT_COLUMNS = """
    last_heartbeat_at = now(),
    updated_at = now(),
    last_error_rate = :error_rate,
    last_sample_error = :sample_error,
    active_tasks = :active_tasks,
    uptime_seconds = :uptime_seconds,
    current_task = :current_task,
    monthly_spend = CASE WHEN :monthly_spend > 0 THEN :monthly_spend ELSE monthly_spend END,
    runtime_metadata = CAST(:runtime_metadata AS jsonb),
    last_heartbeat_sent_at = GREATEST(last_heartbeat_sent_at, CAST(:sent_at AS timestamptz)),
    -- Idle time is tracked from the first idle heartbeat; further idle ones keep it.
    idle_since = CASE WHEN :active_tasks > 0 THEN NULL ELSE COALESCE(idle_since, now()) END
"""

_UPDATE_SAME_STATUS = text(
    f"UPDATE workspaces SET {_SET_HEARTBEAT_COLUMNS} WHERE id = :id AND status = :expected"
)
# A transition is the same UPDATE plus the status, still conditional on the status
# read under the row lock: a concurrent delete or sweep can never be overwritten.
_UPDATE_WITH_TRANSITION = text(
    f"UPDATE workspaces SET {_SET_HEARTBEAT_COLUMNS}, status = :new_status "
    "WHERE id = :id AND status = :expected"
)


@dataclass
class _Locked:
    """A workspace row as the batch sees it, advanced as its heartbeats apply."""

    status: str
    current_task: str | None
    last_sent_at: datetime | None
    registered_before: bool
    has_live_token: bool
    matched_token: dict[int, UUID | None]  # by position in the batch
    touch_due: set[UUID]  # matched tokens whose last_used_at is due a refresh
    db_now: datetime  # the database's clock: every time comparison uses it (CONTRACT §3)


def _lock_rows(uow: UnitOfWork, heartbeats: Sequence[HeartbeatPayload]) -> dict[UUID, _Locked]:
    rows = uow.conn.execute(
        _LOCK_AND_READ,
        {
            "ids": [hb.workspace_id for hb in heartbeats],
            "hashes": [hash_token(hb.auth_token) if hb.auth_token else "" for hb in heartbeats],
            "touch_after": LAST_USED_RESOLUTION_SECONDS,
        },
    ).all()
    locked: dict[UUID, _Locked] = {}
    for row in rows:
        state = locked.setdefault(
            row.id,
            _Locked(
                row.status,
                row.current_task,
                row.last_sent_at,
                row.registered_before,
                row.has_live,
                {},
                set(),
                row.db_now,
            ),
        )
        state.matched_token[row.ord - 1] = row.matched_id
        if row.touch_due:
            state.touch_due.add(row.matched_id)
    return locked


def _params(hb: HeartbeatPayload, expected: str) -> dict[str, Any]:
    return {
        "id": hb.workspace_id,
        "expected": expected,
        "error_rate": hb.error_rate,
        "sample_error": hb.sample_error,
        "active_tasks": hb.active_tasks,
        "uptime_seconds": hb.uptime_seconds,
        "current_task": hb.current_task,
        "monthly_spend": hb.monthly_spend,
        "runtime_metadata": (
            hb.runtime_metadata.model_dump_json() if hb.runtime_metadata is not None else None
        ),
        "sent_at": hb.sent_at,
    }


def apply_heartbeats(
    uow: UnitOfWork, heartbeats: Sequence[HeartbeatPayload]
) -> list[dict[str, Any]]:
    """Apply validated heartbeats in order; one result object per heartbeat."""
    if not heartbeats:
        return []
    locked = _lock_rows(uow, heartbeats)
    ttl = get_settings().liveness_ttl_seconds
    results: list[dict[str, Any]] = []
    writes: list[tuple[TextClause, dict[str, Any]]] = []
    used_tokens: list[UUID] = []

    for position, hb in enumerate(heartbeats):
        state = locked.get(hb.workspace_id)
        refusal = _refusal(hb, state, position)
        if refusal is not None:
            results.append(refusal.as_result())
            continue
        assert state is not None  # _refusal answers for unknown workspaces

        facts = HeartbeatFacts(
            runtime_state=hb.runtime_state,
            error_rate=hb.error_rate,
            sample_error=hb.sample_error,
            native_status_mgmt=bool(hb.runtime_metadata and hb.runtime_metadata.native_status_mgmt),
            registered_before=state.registered_before,
        )
        rule = heartbeat_transition(state.status, facts)
        params = _params(hb, state.status)
        if rule is None:
            writes.append((_UPDATE_SAME_STATUS, params))
        else:
            writes.append((_UPDATE_WITH_TRANSITION, {**params, "new_status": str(rule.to_status)}))
            record_event_on_commit(uow, rule.event, hb.workspace_id, rule.payload(facts))
            metrics.record_transition(state.status, rule.to_status)
            state.status = str(rule.to_status)

        if (state.current_task or "") != (hb.current_task or ""):
            broadcast_event_on_commit(
                uow,
                EventType.TASK_UPDATED,
                hb.workspace_id,
                {"current_task": hb.current_task or "", "active_tasks": hb.active_tasks},
            )
        broadcast_event_on_commit(
            uow,
            EventType.WORKSPACE_HEARTBEAT,
            hb.workspace_id,
            {"active_tasks": hb.active_tasks, "uptime_seconds": hb.uptime_seconds},
        )
        state.current_task = hb.current_task
        if hb.sent_at and (state.last_sent_at is None or hb.sent_at > state.last_sent_at):
            state.last_sent_at = hb.sent_at
        matched = state.matched_token.get(position)
        if matched in state.touch_due:
            used_tokens.append(matched)
        uow.on_commit(lambda pipe, ws=hb.workspace_id: set_liveness(pipe, ws, ttl))
        results.append({"status": "ok", "workspace_status": state.status})

    # Runs of the same statement go out as one executemany; the order of the batch is
    # kept, so the same workspace twice in one batch applies in order.
    for statement, run in groupby(writes, key=lambda write: write[0]):
        uow.conn.execute(statement, [params for _, params in run])
    touch_tokens(uow.conn, sorted(set(used_tokens)))
    for result in results:
        metrics.HEARTBEATS.labels(result["status"]).inc()
    return results


def _refusal(hb: HeartbeatPayload, state: _Locked | None, position: int) -> MessageRefused | None:
    """Why a heartbeat must not apply (CONTRACT §4.2 steps 1, 2 and 4), or None."""
    if state is None:
        return Rejected("workspace_id: unknown workspace")
    if hb.sent_at is not None:
        # A producer clock far ahead would block every later heartbeat by the
        # ordering guard; "ahead" is judged by the database's clock, not the worker's.
        ahead = (hb.sent_at - state.db_now).total_seconds()
        if ahead > MAX_SENT_AT_SKEW_SECONDS:
            return Rejected(
                f"sent_at: is {ahead:.0f} s in the future (more than {MAX_SENT_AT_SKEW_SECONDS} s)"
            )
    if not is_authorized(state.has_live_token, state.matched_token.get(position)):
        return Unauthorized(UNAUTHORIZED_ERROR)
    if state.status == Status.REMOVED:
        return Ignored("workspace was removed")
    if hb.sent_at and state.last_sent_at and hb.sent_at < state.last_sent_at:
        return Ignored("older than the last heartbeat applied (sent_at)")
    return None
