"""The subscriber: reads the stream, notices gaps, replays them, hands items out."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime

import redis
from sqlalchemy import Engine

from registry.events.outbox import EVENT_STREAM
from registry.events.subscriber.backoff import RETRYABLE_ERRORS, Backoff
from registry.events.subscriber.dedup import RecentIds
from registry.events.subscriber.gaps import Entries, Head, detect_gap, entries_of, look, run_id_of
from registry.events.subscriber.items import Item, ReceivedEvent, StreamGap
from registry.events.subscriber.position import Position, Since
from registry.events.subscriber.replay import (
    Replay,
    event_of,
    first_id_since,
    newest_id,
    rows_after,
)
from registry.events.subscriber.streamids import stream_id_at, stream_id_before, stream_id_time

log = logging.getLogger("registry.events.subscriber")


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
        self._recent = RecentIds(dedup_window)
        self._replay: Replay | None = None
        self._backoff = Backoff()
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
                        self._backoff.reset()
                        return True
        except RETRYABLE_ERRORS as exc:
            self._backoff.wait(exc, stop)
            return False
        self._backoff.reset()
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
            newest = newest_id(conn)
        return Position(head.last_id, newest, head.run_id)

    def _look(self, position: Position | None) -> Head:
        return look(self._client, self._stream, position, self._batch)

    def _check_gap(self, head: Head, position: Position) -> bool:
        """Start a replay when entries after `position` are gone; True if one started."""
        reason = detect_gap(head, position)
        if reason is None:
            if head.run_id and position.redis_run_id is None:
                self._position = Position(position.stream_id, position.event_id, head.run_id)
            return False
        # The live stream continues from its present end: everything before it is
        # either replayed from the database (recorded) or reported lost (broadcast).
        resume = Position(head.last_id if head.exists else "0-0", None, head.run_id)
        gap = StreamGap(
            reason=reason,
            since=stream_id_time(position.stream_id),
            until=stream_id_time(resume.stream_id) if head.exists else datetime.now(UTC),
            resume_stream_id=resume.stream_id,
        )
        log.warning("event subscriber: %s", gap.describe())
        self._replay = Replay(position.event_id, gap.since, resume)
        self._queue(gap, position)
        return True

    def _replay_batch(self, replay: Replay, position: Position) -> None:
        with self._engine.connect() as conn:
            if replay.after_id is None:
                first = first_id_since(conn, replay.since)
                if first is None:
                    self._finish_replay(replay, position)
                    return
                replay.after_id = first - 1
            rows = rows_after(conn, replay.after_id, self._batch)
        for row in rows:
            replay.after_id = row.id
            position = Position(
                position.stream_id, position.after_event(row.id), position.redis_run_id
            )
            event = None
            if row.id not in self._recent:
                self._recent.add(row.id)
                event = event_of(row)
            self._queue(event, position)
        if len(rows) < self._batch:
            self._finish_replay(replay, position)

    def _finish_replay(self, replay: Replay, position: Position) -> None:
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
        run_id = run_id_of(server)
        if run_id and position.redis_run_id and run_id != position.redis_run_id:
            return
        self._take(entries_of(entries), position, run_id)

    def _take(self, entries: Entries, position: Position, run_id: str | None) -> None:
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
