"""Gap detection: one atomic look at the stream says whether entries after a position
were trimmed or the stream was reset (Redis restarted), and reads what follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import redis.exceptions

from registry.events.outbox import EVENT_STREAM
from registry.events.subscriber.position import Position, parse_stream_id

Entries = list[tuple[str, dict[str, str]]]
GapReason = Literal["trimmed", "redis_reset"]


@dataclass
class Head:
    """What one atomic look at the stream says."""

    run_id: str | None
    exists: bool
    first_id: str | None = None
    last_id: str = "0-0"
    max_deleted_id: str = "0-0"  # raised by XDEL only (trimming leaves it alone)
    deleted_any: bool = False  # some entry was ever trimmed or deleted
    entries: Entries = field(default_factory=list)


def look(client: redis.Redis, stream: str, position: Position | None, batch: int) -> Head:
    """Server run id, stream bounds and (without blocking) the entries after `position`.

    One MULTI, so a trim cannot slip between the check and the read.
    """
    pipe = client.pipeline(transaction=True)
    pipe.info("server")
    pipe.xinfo_stream(stream)
    if position is not None:
        pipe.xread({stream: position.stream_id}, count=batch)
    replies = pipe.execute(raise_on_error=False)
    server, info = replies[0], replies[1]
    head = Head(run_id=run_id_of(server), exists=isinstance(info, dict))
    if isinstance(info, dict):
        first = info.get("first-entry")
        head.first_id = first[0] if first else None
        head.last_id = info.get("last-generated-id") or "0-0"
        head.max_deleted_id = info.get("max-deleted-entry-id") or "0-0"
        added = info.get("entries-added")  # Redis 7+; older servers: assume trimmed
        head.deleted_any = added is None or added > info.get("length", 0)
    elif not is_missing_key(info):
        raise info
    if position is not None:
        if isinstance(replies[2], Exception):
            raise replies[2]
        head.entries = entries_of(replies[2])
    return head


def detect_gap(head: Head, position: Position) -> GapReason | None:
    """Why entries after `position` are gone, or None when none are."""
    here = parse_stream_id(position.stream_id)
    known_run = position.redis_run_id
    reset = bool(head.run_id and known_run and head.run_id != known_run) or (
        here > (0, 0)
        and (not head.exists or (known_run is not None and here > parse_stream_id(head.last_id)))
    )
    if reset:
        return "redis_reset"
    return "trimmed" if trimmed_past(head, here) else None


def trimmed_past(head: Head, here: tuple[int, int]) -> bool:
    """Did the stream lose entries after `here`?

    Trimming drops the oldest entries, so it did if the oldest entry left is beyond
    the id right after ours (or none is left but more were added after ours), and
    something was ever dropped. When our entry and the next ones were trimmed
    together this cannot tell whether entries after ours existed: it says yes,
    and the replay from the database is merely unnecessary.
    """
    if parse_stream_id(head.max_deleted_id) > here:  # XDEL behind our back
        return True
    if not head.deleted_any:
        return False
    if head.first_id is None:
        return parse_stream_id(head.last_id) > here
    return parse_stream_id(head.first_id) > (here[0], here[1] + 1)


def stream_head(client: redis.Redis, stream: str = EVENT_STREAM) -> Position:
    """The position of the stream's last entry now: read from here for what comes next."""
    pipe = client.pipeline(transaction=True)
    pipe.info("server")
    pipe.xinfo_stream(stream)
    server, info = pipe.execute(raise_on_error=False)
    if isinstance(info, Exception) and not is_missing_key(info):
        raise info
    last = info.get("last-generated-id") if isinstance(info, dict) else None
    return Position(last or "0-0", None, run_id_of(server))


def run_id_of(server_info: Any) -> str | None:
    # INFO may be disabled (renamed) on a managed Redis: then restarts go unnoticed
    # unless the stream itself shows it.
    return server_info.get("run_id") if isinstance(server_info, dict) else None


def is_missing_key(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and "no such key" in str(reply).lower()


def entries_of(reply: Any) -> Entries:
    """XREAD's reply for one stream as (id, fields) pairs (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        return [tuple(e) for batch in streams for e in (batch[0] if batch else [])]
    return [
        (entry_id, entry_fields) for _name, entries in reply for entry_id, entry_fields in entries
    ]
