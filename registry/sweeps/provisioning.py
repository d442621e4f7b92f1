"""Provisioning timeout (CONTRACT §5): a container that never registered → `failed`.

A workspace sits in `provisioning` from the moment its row is created until its agent
registers (or sends a first heartbeat). If that takes longer than its runtime's
timeout, the container is assumed stuck: the row goes to `failed`, `last_sample_error`
says why, and `WORKSPACE_PROVISION_FAILED` is recorded.

Time in `provisioning` is `now() - LEAST(status_changed_at, updated_at)`:
`status_changed_at` (a trigger keeps it true whoever writes the status) or the shared
`updated_at` column, whichever is earlier — a row another service or an operator
dated back by its `updated_at` counts from there. Measured on the database's clock.
Candidates come from the partial index `ix_workspaces_provisioning`, so a sweep costs
in proportion to the rows in `provisioning`, not to the fleet.

This is an explicit signal, not a liveness guess: self-preservation never pauses it.
`awaiting_agent` (an external workspace whose agent has not connected) is never
swept here: its agent runs on the operator's machine and may connect at any time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from registry import metrics
from registry.events.outbox import RECORDED_COLUMNS, recorded_events, recording_ctes
from registry.liveness.selfpreservation.counts import deltas_cte, records_its_deltas
from registry.statuses import EventType, Status
from registry.uow import UnitOfWork

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 12 * 60  # the original's newest default (CONTRACT §12)
# Runtimes that boot slower than the default allows.
RUNTIME_TIMEOUT_SECONDS: Mapping[str, int] = {"hermes": 30 * 60}
SOURCE = "provision_timeout_sweep"

# When a row counts as entered `provisioning`: by the status trigger, or by the shared
# `updated_at` column (CONTRACT §3) that other services and operators write; the earlier
# of the two. Exactly the key of the partial index ix_workspaces_provisioning.
_ENTERED = "LEAST(w.status_changed_at, w.updated_at)"
_TIMEOUT = "COALESCE((CAST(:per_runtime AS jsonb) ->> w.runtime)::int, :default_secs)"

FAIL_TIMED_OUT = text(
    f"""
    WITH cand AS (
        SELECT w.id, w.ctid, w.runtime, {_TIMEOUT} AS timeout_secs
        FROM workspaces w
        WHERE w.status = 'provisioning'
          AND {_ENTERED} < now() - make_interval(secs => :shortest_secs)
          AND {_ENTERED} < now() - make_interval(secs => {_TIMEOUT})
        -- The index's order: the scan stops after `limit` timed-out rows, however many
        -- rows are in provisioning.
        ORDER BY {_ENTERED}
        LIMIT :limit
        -- A row locked by a registration in flight is being brought online: skip it
        -- rather than wait; two sweeps never claim the same row. The lock re-reads a
        -- row committed meanwhile and re-tests this WHERE, so a workspace that
        -- registered since the statement began is left alone.
        FOR UPDATE OF w SKIP LOCKED
    ), failed AS (
        UPDATE workspaces w
        SET status = 'failed',
            updated_at = now(),
            last_sample_error = format(:message, cand.timeout_secs, cand.runtime)
        FROM cand
        WHERE w.id = cand.id AND w.status = 'provisioning'
          -- By the locked rows' addresses (TID scan: no index descent per row), never a
          -- hash of the whole table against the batch.
          AND w.ctid = ANY(ARRAY(SELECT ctid FROM cand))
        RETURNING w.id, cand.runtime, cand.timeout_secs, w.last_sample_error,
                  'provisioning' AS previous_status, w.status
    ), {deltas_cte("failed")}, {
        recording_ctes(
            "failed",
            f"'{EventType.WORKSPACE_PROVISION_FAILED}'",
            "jsonb_build_object('error', c.last_sample_error, 'timeout_secs', c.timeout_secs, "
            f"'runtime', c.runtime, 'source', '{SOURCE}')",
        )
    }
    -- The failed rows, their status-count deltas, events and outbox rows: one statement,
    -- one round trip (run under records_its_deltas).
    SELECT {RECORDED_COLUMNS} FROM ev
    """
)

_MESSAGE = "provisioning timed out: the container never registered within %s s (runtime %s)"


def timeouts(override: int | None) -> tuple[int, dict[str, int]]:
    """(default timeout, per-runtime timeouts) in seconds; an override replaces all."""
    if override is not None and override > 0:
        return override, {}
    return DEFAULT_TIMEOUT_SECONDS, dict(RUNTIME_TIMEOUT_SECONDS)


def timeout_for(runtime: str, override: int | None) -> int:
    default, per_runtime = timeouts(override)
    return per_runtime.get(runtime, default)


def fail_params(timeout_override: int | None, limit: int) -> dict[str, Any]:
    """The parameters of FAIL_TIMED_OUT."""
    default, per_runtime = timeouts(timeout_override)
    return {
        "per_runtime": json.dumps(per_runtime),
        "default_secs": default,
        "shortest_secs": min([default, *per_runtime.values()]),
        "message": _MESSAGE,
        "limit": limit,
    }


def sweep_provisioning(
    uow: UnitOfWork, *, timeout_override: int | None = None, limit: int = 500
) -> dict[str, Any]:
    """Fail every workspace provisioning for longer than its timeout; one event each.

    `timeout_override` is PROVISION_TIMEOUT_SECONDS (None: the per-runtime defaults).
    At most `limit` rows per call; `more` says the next tick has work left.
    """
    with records_its_deltas(uow.conn):
        rows = uow.conn.execute(FAIL_TIMED_OUT, fail_params(timeout_override, limit)).all()
    events = recorded_events(rows)
    uow.recorded_events.extend(events)
    failed = len(events)
    uow.after_commit(lambda: metrics.record_transition(Status.PROVISIONING, Status.FAILED, failed))
    if events:  # one line per batch (up to `limit` rows); each row at INFO
        log.warning("%d workspace(s) failed: provisioning timed out without registering", failed)
    for event in events:
        log.info(
            "workspace %s (runtime %s) failed: no registration within %d s of provisioning",
            event.workspace_id,
            event.payload["runtime"],
            event.payload["timeout_secs"],
        )
    return {"status": "ok", "changed": failed, "more": failed == limit}
