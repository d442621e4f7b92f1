"""Where a subscriber stands, and the resume-token format that persists it.

A token is `<stream id>:<event id>:<redis run id>`, each part after the first
optional; a bare stream id is a token too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from registry.events.subscriber.streamids import format_stream_id, parse_stream_id


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
