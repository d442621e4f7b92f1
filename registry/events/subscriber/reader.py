"""The subscriber: reads the stream, notices gaps, replays them, hands items out."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

import redis
from sqlalchemy import Engine

from registry.backoff import Backoff
from registry.config import get_settings
from registry.events.outbox import EVENT_STREAM
from registry.events.subscriber.channel import BroadcastListener
from registry.events.subscriber.gaps import Entries, Head, detect_gap, entries_of, look, run_id_of
from registry.events.subscriber.items import (
    HistoryTooOld,
    Item,
    ReceivedEvent,
    RecentIds,
    ReplayTooOld,
    StreamGap,
)
from registry.events.subscriber.latecommits import LateCommits
from registry.events.subscriber.position import (
    Position,
    Since,
    stream_id_at,
    stream_id_before,
    stream_id_time,
)
from registry.events.subscriber.replay import (
    Pruned,
    Replay,
    event_of,
    first_id_since,
    newest_id,
    pruned_before,
    rows_after,
)
from registry.transient import DEPENDENCY_ERRORS

log = logging.getLogger("registry.events.subscriber")

# Riding out outages: the registry's dependency errors (registry/transient.py) and
# backoff (registry/backoff.py) with the subscriber's own timings.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = DEPENDENCY_ERRORS
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0


class Subscriber:
    """Iterate the registry's events from a point in time, resumably.

    `since`: "now" (default), "start", a stream id, an aware datetime, or a saved
    `Position` (or its token); resolved when the subscriber is made (or, if Redis is
    unreachable then, on the first read). Not thread-safe: one per consumer thread.

    `broadcast=True`: also hand out broadcast-only events (heartbeats, task updates)
    live from the `events:broadcast` channel, from the moment the subscriber is made.
    `too_old`: when a replay must start before the retention window
    (`EVENTS_RETENTION_DAYS`, or `retention_days`), hand out a `HistoryTooOld` notice
    and go on from the oldest event kept ("notice"), or raise `ReplayTooOld` ("raise").
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
        broadcast: bool = False,
        too_old: Literal["notice", "raise"] = "notice",
        retention_days: int | None = None,
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
        self._backoff = Backoff(first=BACKOFF_FIRST_SECONDS, cap=BACKOFF_MAX_SECONDS)
        self._late = LateCommits()
        self._too_old = too_old
        self._retention_days = (
            get_settings().events_retention_days if retention_days is None else retention_days
        )
        self._live_bodies = RecentIds(dedup_window)
        self._listener = BroadcastListener(client) if broadcast else None
        # XREAD BLOCK must return before the client's socket timeout fires.
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_block_ms = max(100, int(timeout * 1000) - 1000) if timeout else None
        try:  # "now" means now, not the first read; if Redis is down, the first read
            if self._listener is not None:
                self._listener.subscribe()  # before the stream's end is read: no hole
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

    def close(self) -> None:
        """Let go of the broadcast channel's connection (if listening)."""
        if self._listener is not None:
            self._listener.close()

    # -- reading ------------------------------------------------------------

    def _fill(self, block_ms: int, stop: threading.Event | None) -> bool:
        """Queue what comes next; True when the stream had nothing new for us."""
        try:
            position = self._settle_late_commits(self.position)
            if self._replay is not None:
                self._replay_batch(self._replay, position)
            else:
                head = self._look(position)
                if not self._check_gap(head, position):
                    position = self.position  # may have adopted the server's run id
                    # The channel is live only: a read that does not wait (catching up,
                    # follow=False) leaves it alone, or a busy fleet would never let it end.
                    if head.entries:
                        self._take(head.entries, position, head.run_id)
                    live = block_ms > 0 and self._listen(0)
                    if head.entries or live:
                        pass  # something came; the stream is looked at again next
                    elif block_ms > 0:
                        if self._listener is None:
                            self._take_blocking(position, block_ms)
                        else:  # any event on the channel wakes us to read the stream
                            self._listen(self._block_seconds(block_ms))
                    else:
                        self._backoff.reset()
                        return True
        except RETRYABLE_ERRORS as exc:
            delay = self._backoff.next_delay()
            text = str(exc).strip()
            reason = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
            log.warning("event subscriber: %s; retrying in %.1f s", reason, delay)
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            return False
        self._backoff.reset()
        return False

    def _block_seconds(self, block_ms: int) -> float:
        if self._max_block_ms is not None:
            block_ms = min(block_ms, self._max_block_ms)
        return block_ms / 1000

    def _settle_late_commits(self, position: Position) -> Position:
        """Forget pending ids no transaction can commit any more (checked once a second)."""
        if not self._late.due(position.pending):
            return position
        with self._engine.connect() as conn:
            final = self._late.settle(conn, position.pending)
        if final:
            self._position = position.forget(final)
        return self.position

    def _listen(self, timeout: float) -> bool:
        """Queue broadcast-only events from the channel; True if any message came."""
        if self._listener is None:
            return False
        found, woke = self._listener.receive(timeout)
        for body, event in found:
            self._queue_live(body, event)
        return woke

    def _first_copy(self, body: str) -> bool:
        """Whether a broadcast-only event's body is new (it may come by channel and stream)."""
        key = hashlib.blake2b(body.encode("utf-8", "replace"), digest_size=16).digest()
        if key in self._live_bodies:
            return False
        self._live_bodies.add(key)
        return True

    def _queue_live(self, body: str, event: ReceivedEvent) -> None:
        if self._first_copy(body):
            position = self._pending[-1][1] if self._pending else self.position
            self._pending.append((event, position))

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
                self._position = replace(position, redis_run_id=head.run_id)
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
            if not replay.retention_checked:
                replay.retention_checked = True
                pruned = pruned_before(conn, replay, self._retention_days)
                if pruned is not None:
                    position = self._history_too_old(replay, position, pruned)
                    if replay.after_id is None and pruned.oldest_kept_id is not None:
                        replay.after_id = pruned.oldest_kept_id - 1
            if replay.after_id is None:
                first = first_id_since(conn, replay.since)
                if first is None:
                    self._finish_replay(replay, position)
                    return
                replay.after_id = first - 1
            rows = rows_after(conn, replay.after_id, self._batch, position.pending)
        for row in rows:
            replay.after_id = max(replay.after_id, row.id)
            position = position.delivered(row.id)
            event = None
            if row.id not in self._recent:
                self._recent.add(row.id)
                event = event_of(row)
            self._queue(event, position)
        if len(rows) < self._batch:
            self._finish_replay(replay, position)

    def _history_too_old(self, replay: Replay, position: Position, pruned: Pruned) -> Position:
        """Say that the history asked for is gone, and start from the oldest event kept."""
        notice = HistoryTooOld(
            reason="too_old",
            since=pruned.point or datetime.fromtimestamp(0, UTC),
            until=pruned.oldest_kept_at,
            resume_stream_id=replay.resume.stream_id,
            retention_days=self._retention_days,
        )
        log.warning("event subscriber: %s", notice.describe())
        if self._too_old == "raise":
            self._replay = None
            raise ReplayTooOld(notice)
        if pruned.oldest_kept_id is not None and (replay.after_id or 0) < pruned.oldest_kept_id:
            # What lies below the oldest kept event is gone, not pending.
            replay.after_id = pruned.oldest_kept_id - 1
            position = Position(position.stream_id, replay.after_id, position.redis_run_id)
        self._queue(notice, position)
        return position

    def _finish_replay(self, replay: Replay, position: Position) -> None:
        self._replay = None
        resumed = Position(
            replay.resume.stream_id,
            position.after_event(replay.after_id),
            replay.resume.redis_run_id,
            position.pending,
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
            position = position.delivered(event_id, stream_id, run_id)
            # With the channel on, a broadcast-only event may come both ways: once only.
            live_copy = event is not None and event_id is None and self._listener is not None
            if live_copy and not self._first_copy(fields.get("data", "")):
                event = None
            if event_id is not None:
                if event_id in self._recent:  # published twice (outbox relay)
                    event = None
                else:
                    self._recent.add(event_id)
            self._queue(event, position)
