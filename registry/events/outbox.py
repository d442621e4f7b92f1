"""Events (CONTRACT §7): recorded with the change they describe, published after commit.

`registry.uow.record_event_on_commit` writes the event to `structure_events` and to the outbox in
the caller's transaction; the unit of work publishes it once that transaction has
committed and then drops it from the outbox. If the process dies in between, the
event stays in the outbox and `relay_unpublished_events` publishes it later:
publication is at least once, never before the change is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sqlalchemy import Connection, text

from registry.config import get_settings
from registry.events.size import bounded_payload
from registry.jsontext import dumps
from registry.redisconn import queue_replica_wait, replicated
from registry.statuses import BROADCAST_ONLY_EVENTS, EventType

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

BROADCAST_CHANNEL = "events:broadcast"
EVENT_STREAM = "events:stream"


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The events of one heartbeat batch share a timestamp, and those of one marking batch
# its transaction's `now()` (equal values, one object per row): format it once.
_last_stamp: tuple[datetime | None, str] = (None, "")


def _stamp(ts: datetime) -> str:
    global _last_stamp  # noqa: PLW0603 - a one-entry cache; a race only costs a recompute
    last = _last_stamp
    if last[0] == ts:
        return last[1]
    text = rfc3339(ts)
    _last_stamp = (ts, text)
    return text


@dataclass
class Event:
    type: EventType
    workspace_id: UUID | str | None  # text on hot paths: formatting UUIDs adds up
    payload: dict[str, Any]
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    # structure_events.id for recorded events; lets subscribers de-duplicate and
    # resume from the database (None for broadcast-only events).
    event_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": str(self.type),
            "workspace_id": str(self.workspace_id) if self.workspace_id else None,
            "timestamp": _stamp(self.timestamp),
            "payload": self.payload,
        }
        if self.event_id is not None:
            body["event_id"] = self.event_id
        return body

    def to_json(self) -> str:
        return dumps(self.as_dict())


_INSERT_EVENT = text(
    """
    WITH ev AS (
        INSERT INTO structure_events (event_type, workspace_id, payload)
        VALUES (:event_type, :workspace_id, CAST(:payload AS jsonb))
        RETURNING id, created_at
    ), ob AS (
        INSERT INTO event_outbox (event_id, created_at) SELECT id, created_at FROM ev
    )
    SELECT id, created_at FROM ev
    """
)


def insert_recorded_event(
    conn: Connection, event_type: EventType, workspace_id: UUID | None, payload: dict[str, Any]
) -> Event:
    """Insert into structure_events and the outbox; returns the event with its id and time."""
    if event_type in BROADCAST_ONLY_EVENTS:
        raise ValueError(f"{event_type} is broadcast-only and is never recorded")
    # Recorded as published: a replay from structure_events matches the stream entry.
    payload = bounded_payload(payload)
    row = conn.execute(
        _INSERT_EVENT,
        {
            "event_type": str(event_type),
            "workspace_id": workspace_id,
            "payload": dumps(payload),
        },
    ).one()
    return Event(event_type, workspace_id, payload, timestamp=row.created_at, event_id=row.id)


# Many events in one statement: structure_events rows are produced in input order (ORDER BY
# ord), so their serial ids ascend in that order; the outbox rows ride along in the CTE.
_INSERT_EVENTS = text(
    """
    WITH ev AS (
        INSERT INTO structure_events (event_type, workspace_id, payload)
        SELECT u.event_type, u.workspace_id, CAST(u.payload AS jsonb)
        FROM unnest(CAST(:types AS text[]), CAST(:workspaces AS uuid[]), CAST(:payloads AS text[]))
             WITH ORDINALITY AS u(event_type, workspace_id, payload, ord)
        ORDER BY u.ord
        RETURNING id, created_at
    ), ob AS (
        INSERT INTO event_outbox (event_id, created_at) SELECT id, created_at FROM ev
    )
    SELECT id, created_at FROM ev ORDER BY id
    """
)


def insert_recorded_events(
    conn: Connection, events: list[tuple[EventType, UUID | str | None, dict[str, Any]]]
) -> list[Event]:
    """`insert_recorded_event` for many events in one round trip, ids in list order."""
    if not events:
        return []
    for event_type, _, _ in events:
        if event_type in BROADCAST_ONLY_EVENTS:
            raise ValueError(f"{event_type} is broadcast-only and is never recorded")
    events = [(t, ws, bounded_payload(p)) for t, ws, p in events]
    rows = conn.execute(
        _INSERT_EVENTS,
        {
            "types": [str(t) for t, _, _ in events],
            "workspaces": [ws for _, ws, _ in events],
            "payloads": [dumps(p) for _, _, p in events],
        },
    ).all()
    return [
        Event(t, ws, p, timestamp=row.created_at, event_id=row.id)
        for (t, ws, p), row in zip(events, rows, strict=True)
    ]


def recording_ctes(source: str, event_type_sql: str, payload_sql: str) -> str:
    """CTEs `ev` and `ob`: one recorded event (and its outbox row) per row of CTE `source`.

    For set-based marking statements (`… WITH changed AS (UPDATE … RETURNING …), {this}
    SELECT {RECORDED_COLUMNS} FROM ev`): the rows, their events and the outbox in one
    statement and one round trip. `source` exposes `id` (the workspace); the SQL
    expressions read its columns as `c.<column>`. Turn the rows into events with
    `recorded_events`.
    """
    return f"""ev AS (
            INSERT INTO structure_events (event_type, workspace_id, payload)
            SELECT {event_type_sql}, c.id, {payload_sql}
            FROM {source} c
            RETURNING id, workspace_id, event_type, payload, created_at
        ), ob AS (
            INSERT INTO event_outbox (event_id, created_at) SELECT id, created_at FROM ev
        )"""


# What a statement built on `recording_ctes` selects from `ev` for `recorded_events`.
RECORDED_COLUMNS = "ev.id AS event_id, ev.workspace_id, ev.event_type, ev.payload, ev.created_at"


def recorded_events(rows: Sequence[Any]) -> list[Event]:
    """The events of rows selected with RECORDED_COLUMNS (published after the commit)."""
    return [
        Event(EventType(r.event_type), r.workspace_id, r.payload, r.created_at, r.event_id)
        for r in rows
    ]


def delete_from_outbox(conn: Connection, event_ids: list[int]) -> None:
    """Forget events whose publication Redis has accepted."""
    conn.execute(text("DELETE FROM event_outbox WHERE event_id = ANY(:ids)"), {"ids": event_ids})


# One command publishes a whole batch's events in order: at fleet scale a batch carries a
# WORKSPACE_HEARTBEAT per heartbeat, and a thousand PUBLISH commands (or a thousand
# script arguments) cost the client several times what one argument does. Event JSON
# never holds a raw newline (json.dumps escapes it), so the bodies travel joined by one.
# ARGV[2] says per body ('1'/'0') whether it also goes to the stream, so a marking
# batch's PUBLISH and XADD are one command too (500 XADD commands cost the client more
# to build and send than the script costs Redis to run).
_PUBLISH_ALL = """
local n = 0
local to_stream = ARGV[2]
for body in string.gmatch(ARGV[1], "[^\\n]+") do
    n = n + 1
    redis.call('PUBLISH', KEYS[1], body)
    if string.sub(to_stream, n, n) == '1' then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', body)
    end
end
return n
"""


def queue_publication(pipe: redis.client.Pipeline, events: list[Event], stream_maxlen: int) -> None:
    """Add the publication of `events` to a pipeline (one round trip for all).

    Every event goes to the channel, in order; the stream carries recorded events only
    (CONTRACT §7): broadcast-only events (heartbeats, task updates) would outnumber
    status changes a thousand to one and push them out of the capped window.
    EVENTS_STREAM_BROADCASTS adds them for small fleets. XADD uses an approximate
    MAXLEN: Redis trims whole macro-nodes, O(1) amortised.
    """
    if not events:
        return
    with_broadcasts = get_settings().events_stream_broadcasts
    bodies = [event.to_json() for event in events]
    streamed = [with_broadcasts or event.type not in BROADCAST_ONLY_EVENTS for event in events]
    if len(bodies) == 1:
        pipe.publish(BROADCAST_CHANNEL, bodies[0])
        if streamed[0]:
            pipe.xadd(EVENT_STREAM, {"data": bodies[0]}, maxlen=stream_maxlen, approximate=True)
        return
    flags = "".join("1" if s else "0" for s in streamed)
    pipe.eval(
        _PUBLISH_ALL, 2, BROADCAST_CHANNEL, EVENT_STREAM, "\n".join(bodies), flags, stream_maxlen
    )


_CLAIM_UNPUBLISHED = text(
    """
    SELECT e.id, e.event_type, e.workspace_id, e.payload, e.created_at
    FROM event_outbox o JOIN structure_events e ON e.id = o.event_id
    WHERE o.created_at < now() - make_interval(secs => :grace)
    ORDER BY o.event_id
    LIMIT :limit
    -- Two relays (two beats, or a slow one overlapping the next) never take the same
    -- event: each claims rows the other has not locked.
    FOR UPDATE OF o SKIP LOCKED
    """
)


def relay_unpublished_events(
    conn: Connection,
    client: redis.Redis,
    *,
    grace_seconds: int,
    stream_maxlen: int,
    limit: int = 500,
) -> int:
    """Publish outbox events older than the grace period; returns how many.

    The caller owns the transaction: rows stay locked until it commits, and they are
    deleted only after Redis accepted the publication.
    """
    rows = conn.execute(_CLAIM_UNPUBLISHED, {"grace": grace_seconds, "limit": limit}).all()
    if not rows:
        return 0
    events = [
        Event(EventType(r.event_type), r.workspace_id, r.payload, r.created_at, r.id) for r in rows
    ]
    pipe = client.pipeline(transaction=False)
    queue_publication(pipe, events, stream_maxlen)
    waited = queue_replica_wait(pipe, get_settings())  # behind Sentinel: a replica has them
    if not replicated(client, pipe.execute(), waited):
        log.warning("no replica confirmed %d relayed event(s); relaying them again", len(events))
        return 0
    delete_from_outbox(conn, [r.id for r in rows])
    log.warning("relayed %d event(s) whose publication had not been confirmed", len(events))
    return len(events)
