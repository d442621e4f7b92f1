"""What the board loads: the fleet in pages, problems first, and where to read events on.

The first page carries the stream position, taken *before* the rows are read, so
every change after it is in the events read from that position (applying an event
the page already shows is harmless: events say where a workspace ends up, in order).
Later pages continue after the cursor the previous page returned (`after`): sliced
from one read of the whole fleet (ordered.py), or by keyset when no read may serve;
a row that moves past the cursor between pages is caught by its status event,
which the page follows from the first page's position.

Pages are ordered problems first (`STATUS_ORDER`), then by name: the first page
is the useful view, painted before the healthy rest arrives.

`changes_since` is the incremental refresh: rows whose status changed (or that
were created or removed) since a time, for the few changes that publish no event
(a workspace created in provisioning, a pause).

PostgreSQL writes each tile's JSON (`_TILE_JSON`); Python only joins the texts. Turning
50,000 rows into Python values and back into JSON took four fifths of a full load.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import redis
from sqlalchemy import Connection, Engine, RowMapping, text

from registry.board.incidents import open_incidents
from registry.board.ordered import Key, OrderedFleet
from registry.events.outbox import rfc3339
from registry.events.subscriber import Position, stream_head
from registry.jsontext import dumps

# Problems first, then what is on its way, then the healthy bulk.
STATUS_ORDER = (
    "failed",
    "offline",
    "degraded",
    "awaiting_agent",
    "provisioning",
    "paused",
    "hibernating",
    "hibernated",
    "online",
)
MAX_PAGE = 20_000

# What a tile shows; the rest of a row is fetched when it is opened (`one_workspace`).
_TILE_COLUMNS = """
    id, name, status, runtime, tier, active_tasks, max_concurrent_tasks, current_task,
    last_heartbeat_at
"""
# The tile as JSON, for the row `w`: row_to_json writes it compact (json_build_object
# would put spaces around every colon: 15% more to send and to gzip). Times as `rfc3339`
# writes them (UTC, milliseconds, Z); the format is a parameter (`:stamp`, STAMP)
# because its colons would read as parameters in the SQL text.
_TILE_JSON = "row_to_json(tile)::text AS tile"
_TILE_OF_W = """
    CROSS JOIN LATERAL (
        SELECT w.id, w.name, w.status, w.runtime, w.tier, w.active_tasks,
            w.max_concurrent_tasks, w.current_task,
            to_char(w.last_heartbeat_at AT TIME ZONE 'UTC', :stamp) AS last_heartbeat_at
    ) AS tile
"""
STAMP = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'
_DETAIL_COLUMNS = """
    id, name, status, runtime, tier, delivery_mode, parent_id, active_tasks,
    max_concurrent_tasks, current_task, last_heartbeat_at, last_error_rate,
    last_sample_error, uptime_seconds, status_changed_at, agent_card->>'name' AS card_name
"""
_RANK = "CASE status " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STATUS_ORDER))
_RANK += f" ELSE {len(STATUS_ORDER)} END"
# The page is chosen first, on the bare columns, and only its rows are written as JSON
# (in one query, PostgreSQL would write every row's JSON before sorting and cutting).
_PAGE = f"""
    SELECT w.rank, w.name, w.id::text AS id, {_TILE_JSON} FROM (
        SELECT {_TILE_COLUMNS}, {_RANK} AS rank FROM workspaces
        WHERE status <> 'removed' {{after}}
        ORDER BY {_RANK}, name COLLATE "C", id
        LIMIT :limit
    ) AS w {_TILE_OF_W}
    ORDER BY w.rank, w.name COLLATE "C", w.id
"""
# Names in code-point order ("C"): the order of Python's (and the page's) strings, so a
# cursor finds its place in a read kept in memory (ordered.py) whatever the database's
# collation.
_FIRST_PAGE = text(_PAGE.format(after=""))
_NEXT_PAGE = text(_PAGE.format(after=f'AND ({_RANK}, name COLLATE "C", id) > (:rank, :name, :id)'))
WHOLE = 2**31 - 1  # no limit
_COUNTS = text("SELECT status, count(*) AS n FROM workspaces WHERE status <> 'removed' GROUP BY 1")
_ONE = text(f"SELECT {_DETAIL_COLUMNS} FROM workspaces WHERE id = :id")
_CHANGED = text(
    f"SELECT {_TILE_JSON} FROM workspaces AS w {_TILE_OF_W}"
    " WHERE w.status_changed_at >= :since ORDER BY w.name, w.id"
)
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


class BadRequest(ValueError):
    """A query parameter the board cannot use; the message says which and why."""


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: (rank, name, id) of its last row, opaque to the page; `load`:
    when the load's first page was done (which reads may serve it, ordered.py)."""

    rank: int
    name: str
    id: str
    load: str | None = None

    @property
    def key(self) -> Key:
        return (self.rank, self.name, self.id)

    def token(self) -> str:
        raw = json.dumps([*self.key, self.load], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            rank, name, ws, *rest = json.loads(raw)
            load = rest[0] if rest else None
            if len(rest) > 1 or not (load is None or isinstance(load, str)):
                raise ValueError("not a cursor")
            return cls(int(rank), str(name), str(UUID(str(ws))), load)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise BadRequest(f"{token!r} is not a page cursor") from exc


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def workspace_json(row: RowMapping) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in row.items()}


def with_tiles(fields: dict[str, Any], tiles: list[str]) -> str:
    """JSON text of `fields` (not empty) and "workspaces": the tiles, JSON already."""
    head = dumps(fields)
    return f'{head[:-1]},"workspaces":[{",".join(tiles)}]}}'


def parse_limit(raw: str | None) -> int | None:
    """`limit` as given, or None for the whole fleet in one page."""
    if raw is None or raw == "":
        return None
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit {raw!r} is not a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def parse_since(raw: str) -> datetime:
    try:
        since = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"changed_since {raw!r} is not an RFC 3339 time") from None
    if since.tzinfo is None:
        raise BadRequest(f"changed_since {raw!r} has no time zone")
    return since


def ordered_fleet(engine: Engine) -> OrderedFleet:
    """The whole-fleet reads later pages are sliced from (one per board server)."""
    return OrderedFleet(engine, _FIRST_PAGE, {"limit": WHOLE, "stamp": STAMP})


def _page(
    conn: Connection, after: Cursor | None, limit: int | None
) -> tuple[list[str], Key | None]:
    """The page's tiles (JSON texts) and its last key when another page may follow."""
    # No limit: the whole fleet (what scripts and small fleets want).
    size = limit if limit is not None else WHOLE
    if after is None:
        rows = conn.execute(_FIRST_PAGE, {"limit": size, "stamp": STAMP}).all()
    else:
        params = {"rank": after.rank, "name": after.name, "id": after.id, "limit": size}
        rows = conn.execute(_NEXT_PAGE, {**params, "stamp": STAMP}).all()
    last = None
    if limit is not None and len(rows) == limit:
        rank, name, ws, _ = rows[-1]
        last = (rank, name, ws)
    return [row.tile for row in rows], last


def _next_page(
    engine: Engine, ordered: OrderedFleet | None, after: Cursor, limit: int | None
) -> str:
    read = ordered.read_for(after.load) if ordered is not None and after.load else None
    if read is not None:
        tiles, last = read.after(after.key, limit)
    else:
        with engine.connect() as conn:
            tiles, last = _page(conn, after, limit)
    following = Cursor(*last, load=after.load).token() if last else None
    return with_tiles({"next": following}, tiles)


def fleet_snapshot(
    engine: Engine,
    client: redis.Redis,
    *,
    limit: int | None = None,
    after: str | None = None,
    ordered: OrderedFleet | None = None,
) -> str:
    """One page of the fleet as JSON text, problems first; the first page also says where
    to read on.

    First page: `workspaces`, `next` (cursor, or null when this was all), `counts`
    (per status, whole fleet), `total`, `server_time`, `position`, `self_preservation`,
    `incidents` (the open ones, registry.board.incidents).
    Later pages (`after` given): `workspaces` and `next`; from `ordered` when it has (or
    makes) a read that may serve this load.
    """
    if after:
        return _next_page(engine, ordered, Cursor.from_token(after), limit)
    head = stream_head(client)
    # One snapshot of the database for the rows, the counts, the clock and the last event.
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        tiles, last = _page(conn, None, limit)
        counts = {row.status: row.n for row in conn.execute(_COUNTS)}
        clock = conn.execute(_CLOCK).one()
        preservation = conn.execute(_SELF_PRESERVATION).scalar()
        incidents = open_incidents(conn)
    position = Position(head.stream_id, clock.last_event_id, head.redis_run_id)
    load = ordered.stamp() if ordered is not None else None  # the snapshot is done
    fields = {
        "next": Cursor(*last, load=load).token() if last else None,
        "counts": counts,
        "total": sum(counts.values()),
        "server_time": rfc3339(clock.now),
        "position": position.token(),
        "self_preservation": preservation or {"active": False},
        "incidents": incidents,
    }
    return with_tiles(fields, tiles)


def changes_since(engine: Engine, since: datetime) -> str:
    """JSON text: rows whose status changed at or after `since` (removed ones too), and
    the clock."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        tiles = list(conn.execute(_CHANGED, {"since": since, "stamp": STAMP}).scalars())
        clock = conn.execute(_CLOCK).one()
    return with_tiles({"server_time": rfc3339(clock.now)}, tiles)


def one_workspace(conn: Connection, workspace_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(_ONE, {"id": workspace_id}).mappings().first()
    return workspace_json(row) if row is not None else None
