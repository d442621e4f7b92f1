"""Database replay: the recorded events of a gap, read from `structure_events` in id order,
and the retention check that says when the history asked for is gone ("too old")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    retention_checked: bool = False


@dataclass(frozen=True)
class Pruned:
    """Retention removed events the replay would have read."""

    point: datetime | None  # when the requested history starts (None: unknown)
    oldest_kept_id: int | None
    oldest_kept_at: datetime


_BATCH = text(
    """
    SELECT id, event_type, workspace_id, payload, created_at
    FROM structure_events
    WHERE id > :after OR id = ANY(:pending)
    ORDER BY id
    LIMIT :limit
    """
)
_FIRST_ID_SINCE = text("SELECT min(id) FROM structure_events WHERE created_at >= :since")
_NEWEST_ID = text("SELECT coalesce(max(id), 0) FROM structure_events")
_CREATED_AT = text("SELECT created_at FROM structure_events WHERE id = :id")
_OLDEST = text(
    """
    SELECT now() - make_interval(days => :days) AS cutoff,
           (SELECT id FROM structure_events ORDER BY id LIMIT 1) AS oldest_id,
           (SELECT created_at FROM structure_events ORDER BY id LIMIT 1) AS oldest_at
    """
)
_EPOCH = datetime.fromtimestamp(0, UTC)


def first_id_since(conn: Connection, since: datetime) -> int | None:
    return conn.execute(_FIRST_ID_SINCE, {"since": since}).scalar()


def newest_id(conn: Connection) -> int:
    return int(conn.execute(_NEWEST_ID).scalar() or 0)


def rows_after(
    conn: Connection, after: int, limit: int, pending: tuple[int, ...] = ()
) -> list[Any]:
    """Rows above `after`, and the pending ids below it that have committed since."""
    params = {"after": after, "limit": limit, "pending": list(pending)}
    return list(conn.execute(_BATCH, params).all())


def pruned_before(conn: Connection, replay: Replay, retention_days: int) -> Pruned | None:
    """Whether the history this replay starts from is older than the retention window.

    The requested point is when the last delivered event was recorded (or the time the
    subscriber asked to start from). It is "too old" when it lies before the window
    (`EVENTS_RETENTION_DAYS`, by the database clock): rows after it may be deleted.
    """
    if retention_days <= 0:
        return None  # kept forever
    row = conn.execute(_OLDEST, {"days": retention_days}).one()
    oldest_at = row.oldest_at or row.cutoff
    point: datetime | None = replay.since if replay.since > _EPOCH else None
    if replay.after_id is not None:
        at = conn.execute(_CREATED_AT, {"id": replay.after_id}).scalar()
        if at is not None:
            point = at
        elif _pruned_up_to_here(row, replay.after_id):
            return Pruned(point, row.oldest_id, oldest_at)
    if point is None or point >= row.cutoff:
        return None
    return Pruned(point, row.oldest_id, oldest_at)


def _pruned_up_to_here(row: Any, after_id: int) -> bool:
    """The last delivered event is gone, and so is every row up to the oldest kept one,
    which lies at the window's edge: the retention task has been deleting here."""
    if row.oldest_id is None or row.oldest_id <= after_id + 1 or row.oldest_at is None:
        return False
    return bool(row.oldest_at <= row.cutoff + timedelta(days=1))


def event_of(row: Any) -> ReceivedEvent:
    return ReceivedEvent(
        type=row.event_type,
        workspace_id=str(row.workspace_id) if row.workspace_id else None,
        timestamp=row.created_at,
        payload=row.payload if isinstance(row.payload, dict) else {},
        event_id=row.id,
        stream_id=None,
    )
