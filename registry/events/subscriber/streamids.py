"""Position arithmetic on Redis stream ids (`<ms>-<seq>`): parse, order, step back, time."""

from __future__ import annotations

import re
from datetime import UTC, datetime

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
