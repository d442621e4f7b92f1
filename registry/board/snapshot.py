"""What the board loads first: every workspace that is not removed, and where to read on.

The stream position is taken *before* the rows are read, so every change after the
snapshot is in the events read from that position (applying an event the snapshot
already shows is harmless: events say where a workspace ends up).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import redis
from sqlalchemy import Connection, Engine, RowMapping, text

from registry.events.outbox import rfc3339
from registry.events.subscriber import Position, stream_head

_COLUMNS = """
    id, name, status, runtime, tier, delivery_mode, parent_id, active_tasks,
    max_concurrent_tasks, current_task, last_heartbeat_at, last_error_rate,
    last_sample_error, uptime_seconds, status_changed_at, agent_card->>'name' AS card_name
"""
_FLEET = text(f"SELECT {_COLUMNS} FROM workspaces WHERE status <> 'removed' ORDER BY name, id")
_ONE = text(f"SELECT {_COLUMNS} FROM workspaces WHERE id = :id")
# Fleet-wide events are the self-preservation ones; the (workspace_id, id) index
# finds the latest without scanning the table.
_SELF_PRESERVATION = text(
    """
    SELECT payload FROM structure_events
    WHERE workspace_id IS NULL AND event_type = 'REGISTRY_SELF_PRESERVATION'
    ORDER BY workspace_id, id DESC
    LIMIT 1
    """
)
_CLOCK = text("SELECT now() AS now, (SELECT max(id) FROM structure_events) AS last_event_id")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def workspace_json(row: RowMapping) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in row.items()}


def fleet_snapshot(engine: Engine, client: redis.Redis) -> dict[str, Any]:
    """Every non-removed workspace, the server's clock and the position to read from."""
    head = stream_head(client)
    # One snapshot of the database for the rows, the clock and the last event id.
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        rows = conn.execute(_FLEET).mappings().all()
        clock = conn.execute(_CLOCK).one()
        preservation = conn.execute(_SELF_PRESERVATION).scalar()
    position = Position(head.stream_id, clock.last_event_id, head.redis_run_id)
    return {
        "workspaces": [workspace_json(row) for row in rows],
        "server_time": rfc3339(clock.now),
        "position": position.token(),
        "self_preservation": preservation or {"active": False},
    }


def one_workspace(conn: Connection, workspace_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(_ONE, {"id": workspace_id}).mappings().first()
    return workspace_json(row) if row is not None else None
