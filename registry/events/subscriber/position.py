"""Where a subscriber stands: position arithmetic on Redis stream ids (`<ms>-<seq>`), and
the resume-token format that persists it.

A token is `<stream id>:<event id>:<redis run id>:<pending ids>`, each part after the
first optional (a bare stream id is a token too); pending ids are comma-separated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger("registry.events.subscriber")

STREAM_ID = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_SEQ = 2**64 - 1


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


# At most this many ids are remembered as possibly still committing; a token stays short.
MAX_PENDING = 1_000
_PENDING = re.compile(r"^\d+(?:,\d+)*$")


@dataclass(frozen=True)
class Position:
    """Where a subscriber stands; persist `token()` to resume after a restart.

    `stream_id`: the last stream entry consumed (the next read returns entries after
    it). `event_id`: the highest recorded event id delivered, from which the database
    is replayed when the stream lost entries. `redis_run_id`: the Redis server the
    stream id belongs to; a different one means Redis restarted and the stream is new.
    `pending`: ids below `event_id` not delivered yet that a transaction still open may
    commit (ids are allocated at insert, committed in any order); a replay reads them
    too, and they are forgotten once delivered or once no open transaction can hold them.
    """

    stream_id: str = "0-0"
    event_id: int | None = None
    redis_run_id: str | None = None
    pending: tuple[int, ...] = ()

    def token(self) -> str:
        event = "" if self.event_id is None else str(self.event_id)
        token = f"{self.stream_id}:{event}:{self.redis_run_id or ''}"
        return f"{token}:{','.join(map(str, self.pending))}" if self.pending else token

    @classmethod
    def from_token(cls, token: str) -> Position:
        """Inverse of `token()`; a bare stream id is accepted too."""
        stream_id, _, rest = token.strip().partition(":")
        event, _, rest = rest.partition(":")
        run_id, _, pending = rest.partition(":")
        parse_stream_id(stream_id)  # validates
        bad = (
            (event and not event.isdigit())
            or (run_id and not run_id.isalnum())
            or (pending and not _PENDING.match(pending))
        )
        if bad:
            raise ValueError(f"{token!r} is not a subscriber position")
        ids = tuple(sorted({int(p) for p in pending.split(",")})) if pending else ()
        return cls(
            format_stream_id(parse_stream_id(stream_id)),
            int(event) if event else None,
            run_id or None,
            ids[-MAX_PENDING:],
        )

    def after_event(self, event_id: int | None) -> int | None:
        if event_id is None:
            return self.event_id
        return event_id if self.event_id is None else max(self.event_id, event_id)

    def delivered(
        self, event_id: int | None, stream_id: str | None = None, run_id: str | None = None
    ) -> Position:
        """The position after handing out `event_id` (None: a broadcast-only event)."""
        high, pending = self.event_id, self.pending
        if event_id is not None:
            if high is not None and event_id > high + 1:
                # The ids between are in flight (or rolled back): remember them.
                skipped = range(max(high + 1, event_id - MAX_PENDING), event_id)
                if len(skipped) < event_id - high - 1:
                    log.warning(
                        "event subscriber: %d ids skipped at once; only the last %d are "
                        "watched for a late commit",
                        event_id - high - 1,
                        MAX_PENDING,
                    )
                pending = _bounded((*pending, *skipped))
            elif event_id in pending:
                pending = tuple(p for p in pending if p != event_id)
            high = event_id if high is None else max(high, event_id)
        return Position(
            self.stream_id if stream_id is None else stream_id,
            high,
            self.redis_run_id if run_id is None else run_id,
            pending,
        )

    def forget(self, ids: Iterable[int]) -> Position:
        """Without pending `ids` (no transaction can commit them any more)."""
        gone = set(ids)
        if not gone.intersection(self.pending):
            return self
        kept = tuple(p for p in self.pending if p not in gone)
        return Position(self.stream_id, self.event_id, self.redis_run_id, kept)


def _bounded(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(ids)))[-MAX_PENDING:]


# "now" (only what happens from here on), "start" (the oldest entry the stream
# holds), a stream id, a time, or a position saved earlier.
Since = str | datetime | Position | None
