"""Admin lifecycle (CONTRACT §4.4): create and remove workspaces.

Both are safe to run twice. A create without an `id` derives one from the message's
task id, so a redelivered create finds the row it made instead of making a second
workspace; a create whose row already exists with the same name and runtime answers
`created` again (with the same token, for an external workspace created by this
same message: same task id and same payload, within the redelivery window), and one that collides with a different workspace is rejected.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from sqlalchemy import text

from registry import metrics
from registry.ingestion.payloads import CreateWorkspacePayload, RemoveWorkspacePayload
from registry.ingestion.tokens import (
    Delivery,
    Message,
    derive_token,
    issue_token,
    revoke_tokens,
    token_state,
)
from registry.liveness.keys import clear_workspace_keys
from registry.outcomes import Rejected
from registry.statuses import EXTERNAL_RUNTIME, EventType, Status
from registry.uow import UnitOfWork, record_event_on_commit

# Namespace for ids derived from task ids (uuid5): stable across workers and restarts.
_CREATE_NAMESPACE = uuid.UUID("6f1d7c1e-3b0a-4f57-9a1e-6d2b1f0e9c55")


def _workspace_id_for(payload: CreateWorkspacePayload, task_id: str | None) -> UUID:
    if payload.id is not None:
        return payload.id
    return uuid.uuid5(_CREATE_NAMESPACE, task_id) if task_id else uuid.uuid4()


def create_workspace(
    uow: UnitOfWork,
    payload: CreateWorkspacePayload,
    *,
    task_id: str | None = None,
    delivery: Delivery | None = None,
) -> dict[str, Any]:
    ws = _workspace_id_for(payload, task_id)
    external = payload.runtime == EXTERNAL_RUNTIME
    status = Status.AWAITING_AGENT if external else Status.PROVISIONING

    if payload.parent_id is not None:
        parent = uow.conn.execute(
            text("SELECT status FROM workspaces WHERE id = :id"), {"id": payload.parent_id}
        ).first()
        if parent is None or parent.status == Status.REMOVED:
            raise Rejected("parent_id: unknown workspace")

    inserted = uow.conn.execute(
        text(
            """
            INSERT INTO workspaces (id, name, status, runtime, parent_id, tier,
                                    hibernation_idle_minutes, max_concurrent_tasks)
            VALUES (:id, :name, :status, :runtime, :parent, :tier, :hib, :maxc)
            ON CONFLICT (id) DO NOTHING
            RETURNING id
            """
        ),
        {
            "id": ws,
            "name": payload.name,
            "status": str(status),
            "runtime": payload.runtime,
            "parent": payload.parent_id,
            "tier": payload.tier,
            "hib": payload.hibernation_idle_minutes,
            "maxc": payload.max_concurrent_tasks,
        },
    ).first()
    if inserted is None:
        return _existing_create(uow, ws, payload, Message.of(task_id, payload, delivery))

    result: dict[str, Any] = {
        "status": "created",
        "workspace_id": str(ws),
        "workspace_status": str(status),
    }
    # Every runtime gets its token now, returned once, for the provisioner to inject
    # (CONTRACT §4.4): a workspace still provisioning cannot be claimed by whoever
    # registers first.
    result["auth_token"] = issue_token(uow.conn, ws, Message.of(task_id, payload, delivery))
    if external:
        record_event_on_commit(
            uow,
            EventType.WORKSPACE_AWAITING_AGENT,
            ws,
            {"name": payload.name, "runtime": payload.runtime, "reason": "created"},
        )
    return result


def _existing_create(
    uow: UnitOfWork, ws: UUID, payload: CreateWorkspacePayload, message: Message | None
) -> dict[str, Any]:
    row = uow.conn.execute(
        text("SELECT name, runtime, status FROM workspaces WHERE id = :id"), {"id": ws}
    ).one()
    if row.name != payload.name or row.runtime != payload.runtime or row.status == Status.REMOVED:
        raise Rejected(f"id: workspace {ws} already exists")
    result: dict[str, Any] = {
        "status": "created",
        "workspace_id": str(ws),
        "workspace_status": row.status,
    }
    # Only a true redelivery of the same message gets the token back; a task id and a
    # payload are no credential (CONTRACT §4.1 step 7; registry/ingestion/tokens.py).
    if message is not None and token_state(uow.conn, ws, None, message).issued_by_this_message:
        result["auth_token"] = derive_token(ws, message)
    return result


def remove_workspace(uow: UnitOfWork, payload: RemoveWorkspacePayload) -> dict[str, Any]:
    ws = payload.workspace_id
    row = uow.conn.execute(
        text(
            """
            WITH old AS (SELECT id, status FROM workspaces WHERE id = :id FOR UPDATE)
            UPDATE workspaces w SET status = 'removed', updated_at = now()
            FROM old WHERE w.id = old.id AND old.status <> 'removed'
            RETURNING old.status AS previous_status
            """
        ),
        {"id": ws},
    ).first()
    if row is None:
        exists = uow.conn.execute(
            text("SELECT 1 FROM workspaces WHERE id = :id"), {"id": ws}
        ).first()
        if exists is None:
            raise Rejected("workspace_id: unknown workspace")
        # Already removed: no second event. The keys are cleared again below, so a
        # removal retried because Redis failed after its commit leaves none behind.
    else:
        previous = str(row.previous_status)
        # Counted once committed: a rolled-back removal changed nothing.
        uow.after_commit(lambda: metrics.record_transition(previous, Status.REMOVED))
        revoke_tokens(uow.conn, ws)
        record_event_on_commit(
            uow, EventType.WORKSPACE_REMOVED, ws, {"previous_status": row.previous_status}
        )
    uow.on_commit(lambda pipe: clear_workspace_keys(pipe, ws))
    return {"status": "removed", "workspace_id": str(ws)}
