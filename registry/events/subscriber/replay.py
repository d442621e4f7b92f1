"""Database replay: the recorded events of a gap, read from `structure_events` in id order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from registry.events.subscriber.items import ReceivedEvent
from registry.events.subscriber.position import Position


@dataclass
class Replay:
    """A database replay in progress (done in batches, so a huge gap stays bounded)."""

    after_id: int | None  # replay ids above this; None: start from `since`
    since: datetime
    resume: Position  # where the stream continues once the database is drained


_BATCH = text(
    """
    SELECT id, event_type, workspace_id, payload, created_at
    FROM structure_events
    WHERE id > :after
    ORDER BY id
    LIMIT :limit
    """
)
_FIRST_ID_SINCE = text("SELECT min(id) FROM structure_events WHERE created_at >= :since")
_NEWEST_ID = text("SELECT coalesce(max(id), 0) FROM structure_events")


def first_id_since(conn: Connection, since: datetime) -> int | None:
    return conn.execute(_FIRST_ID_SINCE, {"since": since}).scalar()


def newest_id(conn: Connection) -> int:
    return int(conn.execute(_NEWEST_ID).scalar() or 0)


def rows_after(conn: Connection, after: int, limit: int) -> list[Any]:
    return list(conn.execute(_BATCH, {"after": after, "limit": limit}).all())


def event_of(row: Any) -> ReceivedEvent:
    return ReceivedEvent(
        type=row.event_type,
        workspace_id=str(row.workspace_id) if row.workspace_id else None,
        timestamp=row.created_at,
        payload=row.payload if isinstance(row.payload, dict) else {},
        event_id=row.id,
        stream_id=None,
    )
