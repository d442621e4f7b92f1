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

Modules, one job each: `position` (stream-id arithmetic and the resume-token format),
`gaps` (gap detection), `replay` (database replay and the retention check),
`latecommits` (ids a still-open transaction may commit late), `channel`
(broadcast-only events live from `events:broadcast`), `items` (what is handed out, and
the window that hands each out once) and `reader` (the `Subscriber` that ties them
together and rides out outages).

How it reads:

- Each subscriber keeps its own position (the last stream id it consumed, the highest
  `event_id` it delivered, and the Redis server's run id) and reads with XREAD: any
  number of subscribers each see every event, without consumer groups.
- Before each non-blocking read it checks, atomically with the read (MULTI), whether
  entries after its position were trimmed (the oldest entry left lies beyond it) or
  the stream was reset (Redis restarted: the server's run id changed, or the stream
  is gone or behind the position). Then it yields a `StreamGap`, replays the
  `structure_events` rows above the position's `event_id` (or, with no event id yet,
  created since the position's time) in id order, together with the position's
  pending ids (lower ids whose transactions had not committed when a higher one was
  delivered), and continues the stream from its
  end as it was when the gap was found: the entries between are either replayed
  (recorded) or lost (broadcast-only), never delivered out of order.
- Publication is at least once (the outbox relay may publish an event twice), so a
  recorded event whose `event_id` is among the last `dedup_window` delivered is
  skipped. The window lives in memory: a consumer resuming from a saved position in
  a new process may see an event the relay republished once more.
- A replay that must start before the retention window (`EVENTS_RETENTION_DAYS`)
  yields a `HistoryTooOld` notice (or raises `ReplayTooOld`), then goes on from the
  oldest event kept.
- With `broadcast=True`, heartbeats and task updates (published on the channel only)
  are handed out live from `events:broadcast` as well.
- A lost connection to Redis or PostgreSQL is retried with capped exponential backoff;
  nothing is lost, since the position only moves when an item is handed out.
"""

from registry.events.subscriber.gaps import stream_head
from registry.events.subscriber.items import (
    HistoryTooOld,
    Item,
    ReceivedEvent,
    ReplayTooOld,
    StreamGap,
)
from registry.events.subscriber.position import (
    MAX_SEQ,
    Position,
    Since,
    format_stream_id,
    parse_stream_id,
    stream_id_at,
    stream_id_before,
    stream_id_time,
)
from registry.events.subscriber.reader import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    RETRYABLE_ERRORS,
    Subscriber,
)

__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "MAX_SEQ",
    "RETRYABLE_ERRORS",
    "HistoryTooOld",
    "Item",
    "Position",
    "ReceivedEvent",
    "ReplayTooOld",
    "Since",
    "StreamGap",
    "Subscriber",
    "format_stream_id",
    "parse_stream_id",
    "stream_head",
    "stream_id_at",
    "stream_id_before",
    "stream_id_time",
]
