"""Subscribe to the registry's events from any point, with no loss and no duplicate.

Events reach subscribers through the Redis stream `events:stream` (CONTRACT §7). The
stream is capped and Redis keeps nothing on disk, so a subscriber that was away
long enough — or across a Redis restart — finds part of its history gone. Recorded
events are also rows in `structure_events`; this module fills such a gap from there:

    sub = Subscriber(redis_client, engine, since=saved_token or "now")
    for item in sub.events(stop=stop_event):
        if isinstance(item, StreamGap):
            ...  # recorded events of the gap follow; broadcast-only ones are lost
        else:
            handle(item)  # a ReceivedEvent
        saved_token = sub.position.token()  # persist it to resume exactly here

How it reads:

- Each subscriber keeps its own position (the last stream id it consumed, the highest
  `event_id` it delivered, and the Redis server's run id) and reads with XREAD: any
  number of subscribers each see every event, without consumer groups.
- Before each non-blocking read it checks, atomically with the read (MULTI), whether
  entries after its position were trimmed (the oldest entry left lies beyond it) or
  the stream was reset (Redis restarted: the server's run id changed, or the stream
  is gone or behind the position). Then it yields a `StreamGap`, replays the
  `structure_events` rows above the position's `event_id` (or, with no event id yet,
  created since the position's time) in id order, and continues the stream from its
  end as it was when the gap was found: the entries between are either replayed
  (recorded) or lost (broadcast-only), never delivered out of order.
- Publication is at least once (the outbox relay may publish an event twice), so a
  recorded event whose `event_id` is among the last `dedup_window` delivered is
  skipped. The window lives in memory: a consumer resuming from a saved position in
  a new process may see an event the relay republished once more.
- A lost connection to Redis or PostgreSQL is retried with capped exponential backoff;
  nothing is lost, since the position only moves when an item is handed out.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy import Engine, text

from registry.events.outbox import EVENT_STREAM, rfc3339

log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_SEQ = 2**64 - 1

# Errors of a dependency, not of this code: wait and try again.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0


# ---------------------------------------------------------------------------
# Stream ids and positions


def parse_stream_id(value: str) -> tuple[int, int]:
    """`"1712345678901-3"` (or just the milliseconds) as a comparable pair."""
    match = STREAM_ID.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a stream id (expected <ms>-<seq>)")
    return int(match.group(1)), int(match.group(2) or 0)


def format_stream_id(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def stream_id_before(value: str) -> str:
    """The largest id below `value`: XREAD is exclusive, so reading from it includes `value`."""
    ms, seq = parse_stream_id(value)
    if seq > 0:
        return format_stream_id((ms, seq - 1))
    if ms > 0:
        return format_stream_id((ms - 1, MAX_SEQ))
    return "0-0"


def stream_id_time(value: str) -> datetime:
    """When a stream entry was added (its id is the Redis server's clock in ms)."""
    return datetime.fromtimestamp(parse_stream_id(value)[0] / 1000, tz=UTC)


def stream_id_at(moment: datetime) -> str:
    """The position just before the first entry added at or after `moment`."""
    if moment.tzinfo is None:
        raise ValueError("a time to read from must carry its time zone")
    return stream_id_before(f"{int(moment.timestamp() * 1000)}-0")


@dataclass(frozen=True)
class Position:
    """Where a subscriber stands; persist `token()` to resume after a restart.

    `stream_id`: the last stream entry consumed (the next read returns entries after
    it). `event_id`: the highest recorded event id delivered, from which the database
    is replayed when the stream lost entries. `redis_run_id`: the Redis server the
    stream id belongs to; a different one means Redis restarted and the stream is new.
    """

    stream_id: str = "0-0"
    event_id: int | None = None
    redis_run_id: str | None = None

    def token(self) -> str:
        event = "" if self.event_id is None else str(self.event_id)
        return f"{self.stream_id}:{event}:{self.redis_run_id or ''}"

    @classmethod
    def from_token(cls, token: str) -> Position:
        """Inverse of `token()`; a bare stream id is accepted too."""
        stream_id, _, rest = token.strip().partition(":")
        event, _, run_id = rest.partition(":")
        parse_stream_id(stream_id)  # validates
        if event and not event.isdigit():
            raise ValueError(f"{token!r} is not a subscriber position")
        if run_id and not run_id.isalnum():
            raise ValueError(f"{token!r} is not a subscriber position")
        return cls(
            format_stream_id(parse_stream_id(stream_id)),
            int(event) if event else None,
            run_id or None,
        )

    def after_event(self, event_id: int | None) -> int | None:
        if event_id is None:
            return self.event_id
        return event_id if self.event_id is None else max(self.event_id, event_id)


# "now" (only what happens from here on), "start" (the oldest entry the stream
# holds), a stream id, a time, or a position saved earlier.
Since = str | datetime | Position | None


# ---------------------------------------------------------------------------
# What a subscriber hands out


@dataclass(frozen=True)
class ReceivedEvent:
    """One event, as published (CONTRACT §7), with where it was read from."""

    type: str  # an EventType value; kept as text so a newer producer's type never breaks us
    workspace_id: str | None
    timestamp: datetime
    payload: dict[str, Any]
    event_id: int | None  # structure_events.id; None for broadcast-only events
    stream_id: str | None  # None when replayed from structure_events

    @property
    def replayed(self) -> bool:
        return self.stream_id is None

    def as_dict(self) -> dict[str, Any]:
        """The published event JSON, plus `stream_id` (null when replayed)."""
        body: dict[str, Any] = {
            "event": self.type,
            "workspace_id": self.workspace_id,
            "timestamp": rfc3339(self.timestamp),
            "payload": self.payload,
        }
        if self.event_id is not None:
            body["event_id"] = self.event_id
        body["stream_id"] = self.stream_id
        return body

    @classmethod
    def from_stream(cls, stream_id: str, data: str) -> ReceivedEvent:
        body = json.loads(data)
        if not isinstance(body, dict) or not isinstance(body.get("event"), str):
            raise ValueError("not an event object")
        event_id, payload = body.get("event_id"), body.get("payload")
        workspace_id = body.get("workspace_id")
        return cls(
            type=body["event"],
            workspace_id=workspace_id if isinstance(workspace_id, str) else None,
            timestamp=_parse_time(body.get("timestamp"), stream_id),
            payload=payload if isinstance(payload, dict) else {},
            event_id=event_id if isinstance(event_id, int) else None,
            stream_id=stream_id,
        )


@dataclass(frozen=True)
class StreamGap:
    """The stream lost entries this subscriber had not read yet.

    The recorded events of the gap follow at once, replayed from `structure_events`
    in id order (their `stream_id` is None); broadcast-only events of the gap
    (`TASK_UPDATED`, `WORKSPACE_HEARTBEAT`) are lost. `since`..`until` is the window.
    """

    reason: Literal["trimmed", "redis_reset"]
    since: datetime
    until: datetime
    resume_stream_id: str  # the live stream continues after this entry

    def as_dict(self) -> dict[str, Any]:
        return {
            "gap": self.reason,
            "since": rfc3339(self.since),
            "until": rfc3339(self.until),
            "resume_stream_id": self.resume_stream_id,
        }

    def describe(self) -> str:
        what = "stream trimmed" if self.reason == "trimmed" else "Redis restarted"
        return (
            f"gap ({what}) from {rfc3339(self.since)} to {rfc3339(self.until)}: recorded "
            "events replayed from the database; heartbeats and task updates in it are lost"
        )


Item = ReceivedEvent | StreamGap


def _parse_time(value: Any, stream_id: str) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return stream_id_time(stream_id)


# ---------------------------------------------------------------------------
# The subscriber


class _RecentIds:
    """The last N delivered event ids: at-least-once publication, once-only delivery."""

    def __init__(self, size: int) -> None:
        self._order: deque[int] = deque()
        self._ids: set[int] = set()
        self._size = size

    def __contains__(self, event_id: int) -> bool:
        return event_id in self._ids

    def add(self, event_id: int) -> None:
        if event_id in self._ids:
            return
        self._order.append(event_id)
        self._ids.add(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())


@dataclass
class _Replay:
    """A database replay in progress (done in batches, so a huge gap stays bounded)."""

    after_id: int | None  # replay ids above this; None: start from `since`
    since: datetime
    resume: Position  # where the stream continues once the database is drained


@dataclass
class _Head:
    """What one atomic look at the stream says."""

    run_id: str | None
    exists: bool
    first_id: str | None = None
    last_id: str = "0-0"
    max_deleted_id: str = "0-0"  # raised by XDEL only (trimming leaves it alone)
    deleted_any: bool = False  # some entry was ever trimmed or deleted
    entries: list[tuple[str, dict[str, str]]] = field(default_factory=list)


_REPLAY_BATCH = text(
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


class Subscriber:
    """Iterate the registry's events from a point in time, resumably.

    `since`: "now" (default), "start", a stream id, an aware datetime, or a saved
    `Position` (or its token); resolved when the subscriber is made (or, if Redis is
    unreachable then, on the first read). Not thread-safe: one per consumer thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        *,
        since: Since = "now",
        stream: str = EVENT_STREAM,
        batch_size: int = 500,
        dedup_window: int = 20_000,
    ) -> None:
        self._client = client
        self._engine = engine
        self._stream = stream
        self._batch = batch_size
        self._since = since
        self._position: Position | None = None
        self._pending: deque[tuple[Item, Position]] = deque()
        self._recent = _RecentIds(dedup_window)
        self._replay: _Replay | None = None
        self._failures = 0
        # XREAD BLOCK must return before the client's socket timeout fires.
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_block_ms = max(100, int(timeout * 1000) - 1000) if timeout else None
        try:  # "now" means now, not the first read; if Redis is down, the first read
            self._position = self._resolve(since)
        except RETRYABLE_ERRORS:
            log.warning("event subscriber: Redis unreachable; starting point resolved later")

    # -- public -------------------------------------------------------------

    @property
    def position(self) -> Position:
        """The position after the last item handed out (resolved on first use)."""
        if self._position is None:
            self._position = self._resolve(self._since)
        return self._position

    def poll(self, block_ms: int = 2000, stop: threading.Event | None = None) -> list[Item]:
        """The next items, waiting up to `block_ms` for one; [] when none came.

        Connection failures are absorbed: they wait (backoff, cut short by `stop`)
        and return [].
        """
        return [item for item, _ in self.poll_with_positions(block_ms, stop)]

    def poll_with_positions(
        self, block_ms: int = 2000, stop: threading.Event | None = None
    ) -> list[tuple[Item, Position]]:
        """Like `poll`, each item with the position after it (to resume exactly there)."""
        if not self._pending:
            self._fill(block_ms, stop)
        batch = list(self._pending)
        self._pending.clear()
        if batch:
            self._position = batch[-1][1]
        return batch

    def events(
        self, *, block_ms: int = 2000, stop: threading.Event | None = None, follow: bool = True
    ) -> Iterator[Item]:
        """Yield items until `stop` is set; with follow=False, until caught up."""
        while stop is None or not stop.is_set():
            if not self._pending:
                caught_up = self._fill(block_ms if follow else 0, stop)
                if caught_up and not follow and not self._pending:
                    return
                continue
            item, position = self._pending.popleft()
            self._position = position
            yield item

    # -- reading ------------------------------------------------------------

    def _fill(self, block_ms: int, stop: threading.Event | None) -> bool:
        """Queue what comes next; True when the stream had nothing new for us."""
        try:
            position = self.position
            if self._replay is not None:
                self._replay_batch(self._replay, position)
            else:
                head = self._look(position)
                if not self._check_gap(head, position):
                    position = self.position  # may have adopted the server's run id
                    if head.entries:
                        self._take(head.entries, position, head.run_id)
                    elif block_ms > 0:
                        self._take_blocking(position, block_ms)
                    else:
                        self._failures = 0
                        return True
        except RETRYABLE_ERRORS as exc:
            self._back_off(exc, stop)
            return False
        self._failures = 0
        return False

    def _queue(self, item: Item | None, position: Position) -> None:
        """Hand out `item` with the position after it; None just moves past an entry."""
        if item is not None:
            self._pending.append((item, position))
        elif self._pending:  # the skipped entry's position rides on the item before it
            previous, _ = self._pending.pop()
            self._pending.append((previous, position))
        else:
            self._position = position

    def _resolve(self, since: Since) -> Position:
        if isinstance(since, Position):
            return since
        if isinstance(since, datetime):
            return Position(stream_id_at(since))
        value = (since or "now").strip()
        if value not in ("now", "start"):
            try:
                return Position.from_token(value)
            except ValueError:
                raise ValueError(
                    f"{value!r}: expected 'now', 'start', a stream id or a position token"
                ) from None
        head = self._look(None)
        if value == "start" and head.first_id:
            return Position(stream_id_before(head.first_id), None, head.run_id)
        # From the stream's end, and from the newest recorded event: should a gap come
        # before anything was read, the replay starts there, not at the beginning of
        # time (a stream id of 0-0 alone would mean that).
        with self._engine.connect() as conn:
            newest = conn.execute(_NEWEST_ID).scalar()
        return Position(head.last_id, newest, head.run_id)

    def _look(self, position: Position | None) -> _Head:
        """Server run id, stream bounds and (without blocking) the entries after us.

        One MULTI, so a trim cannot slip between the check and the read.
        """
        pipe = self._client.pipeline(transaction=True)
        pipe.info("server")
        pipe.xinfo_stream(self._stream)
        if position is not None:
            pipe.xread({self._stream: position.stream_id}, count=self._batch)
        replies = pipe.execute(raise_on_error=False)
        server, info = replies[0], replies[1]
        head = _Head(run_id=_run_id(server), exists=isinstance(info, dict))
        if isinstance(info, dict):
            first = info.get("first-entry")
            head.first_id = first[0] if first else None
            head.last_id = info.get("last-generated-id") or "0-0"
            head.max_deleted_id = info.get("max-deleted-entry-id") or "0-0"
            added = info.get("entries-added")  # Redis 7+; older servers: assume trimmed
            head.deleted_any = added is None or added > info.get("length", 0)
        elif not _is_missing_key(info):
            raise info
        if position is not None:
            if isinstance(replies[2], Exception):
                raise replies[2]
            head.entries = _entries_of(replies[2])
        return head

    def _check_gap(self, head: _Head, position: Position) -> bool:
        """Start a replay when entries after `position` are gone; True if one started."""
        here = parse_stream_id(position.stream_id)
        known_run = position.redis_run_id
        reset = bool(head.run_id and known_run and head.run_id != known_run) or (
            here > (0, 0)
            and (
                not head.exists or (known_run is not None and here > parse_stream_id(head.last_id))
            )
        )
        trimmed = not reset and self._trimmed_past(head, here)
        if not (reset or trimmed):
            if head.run_id and known_run is None:
                self._position = Position(position.stream_id, position.event_id, head.run_id)
            return False
        # The live stream continues from its present end: everything before it is
        # either replayed from the database (recorded) or reported lost (broadcast).
        resume = Position(head.last_id if head.exists else "0-0", None, head.run_id)
        gap = StreamGap(
            reason="redis_reset" if reset else "trimmed",
            since=stream_id_time(position.stream_id),
            until=stream_id_time(resume.stream_id) if head.exists else datetime.now(UTC),
            resume_stream_id=resume.stream_id,
        )
        log.warning("event subscriber: %s", gap.describe())
        self._replay = _Replay(position.event_id, gap.since, resume)
        self._queue(gap, position)
        return True

    @staticmethod
    def _trimmed_past(head: _Head, here: tuple[int, int]) -> bool:
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

    def _replay_batch(self, replay: _Replay, position: Position) -> None:
        with self._engine.connect() as conn:
            if replay.after_id is None:
                first = conn.execute(_FIRST_ID_SINCE, {"since": replay.since}).scalar()
                if first is None:
                    self._finish_replay(replay, position)
                    return
                replay.after_id = first - 1
            rows = conn.execute(
                _REPLAY_BATCH, {"after": replay.after_id, "limit": self._batch}
            ).all()
        for row in rows:
            replay.after_id = row.id
            position = Position(
                position.stream_id, position.after_event(row.id), position.redis_run_id
            )
            event = None
            if row.id not in self._recent:
                self._recent.add(row.id)
                event = ReceivedEvent(
                    type=row.event_type,
                    workspace_id=str(row.workspace_id) if row.workspace_id else None,
                    timestamp=row.created_at,
                    payload=row.payload if isinstance(row.payload, dict) else {},
                    event_id=row.id,
                    stream_id=None,
                )
            self._queue(event, position)
        if len(rows) < self._batch:
            self._finish_replay(replay, position)

    def _finish_replay(self, replay: _Replay, position: Position) -> None:
        self._replay = None
        resumed = Position(
            replay.resume.stream_id,
            position.after_event(replay.after_id),
            replay.resume.redis_run_id,
        )
        self._queue(None, resumed)

    def _take_blocking(self, position: Position, block_ms: int) -> None:
        if self._max_block_ms is not None:
            block_ms = min(block_ms, self._max_block_ms)
        pipe = self._client.pipeline(transaction=False)
        pipe.xread({self._stream: position.stream_id}, count=self._batch, block=block_ms)
        # Asked after the XREAD, on the same connection: if the client reconnected to a
        # restarted Redis while blocked, the entries belong to a new stream; drop them
        # and let the next look replay the gap first.
        pipe.info("server")
        entries, server = pipe.execute()
        run_id = _run_id(server)
        if run_id and position.redis_run_id and run_id != position.redis_run_id:
            return
        self._take(_entries_of(entries), position, run_id)

    def _take(
        self, entries: list[tuple[str, dict[str, str]]], position: Position, run_id: str | None
    ) -> None:
        run_id = run_id or position.redis_run_id
        for stream_id, fields in entries:
            try:
                event: ReceivedEvent | None = ReceivedEvent.from_stream(
                    stream_id, fields.get("data", "")
                )
            except (ValueError, TypeError) as exc:
                log.warning("skipping unreadable stream entry %s: %s", stream_id, exc)
                event = None
            event_id = event.event_id if event else None
            position = Position(stream_id, position.after_event(event_id), run_id)
            if event_id is not None:
                if event_id in self._recent:  # published twice (outbox relay)
                    event = None
                else:
                    self._recent.add(event_id)
            self._queue(event, position)

    def _back_off(self, exc: BaseException, stop: threading.Event | None) -> None:
        self._failures += 1
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)  # several subscribers do not retry in step
        reason = (
            str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        )
        log.warning("event subscriber: %s; retrying in %.1f s", reason, delay)
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)


def stream_head(client: redis.Redis, stream: str = EVENT_STREAM) -> Position:
    """The position of the stream's last entry now: read from here for what comes next."""
    pipe = client.pipeline(transaction=True)
    pipe.info("server")
    pipe.xinfo_stream(stream)
    server, info = pipe.execute(raise_on_error=False)
    if isinstance(info, Exception) and not _is_missing_key(info):
        raise info
    last = info.get("last-generated-id") if isinstance(info, dict) else None
    return Position(last or "0-0", None, _run_id(server))


def _run_id(server_info: Any) -> str | None:
    # INFO may be disabled (renamed) on a managed Redis: then restarts go unnoticed
    # unless the stream itself shows it.
    return server_info.get("run_id") if isinstance(server_info, dict) else None


def _is_missing_key(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and "no such key" in str(reply).lower()


def _entries_of(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XREAD's reply for one stream as (id, fields) pairs (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        return [tuple(e) for batch in streams for e in (batch[0] if batch else [])]
    return [
        (entry_id, entry_fields) for _name, entries in reply for entry_id, entry_fields in entries
    ]
