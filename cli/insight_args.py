"""Arguments shared by `history` and `report`: `--since` and durations as text."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
MAX_SINCE = timedelta(days=3660)


def parse_window(value: str, now: datetime | None = None) -> datetime:
    """`--since`: a duration ago (90m, 24h, 7d, 1d12h) or an RFC 3339 time; a bad value
    is one line and exit code 1 (click.ClickException)."""
    now = now or datetime.now(UTC)
    raw = value.strip().lower()
    if DURATION.match(raw):
        seconds = sum(float(n) * UNIT_SECONDS[u] for n, u in DURATION_PART.findall(raw))
        if not 0 < seconds <= MAX_SINCE.total_seconds():
            raise click.ClickException(
                f"--since {value!r}: must be more than 0 and at most 10 years"
            )
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.ClickException(
            f"--since {value!r}: use a duration ago (90m, 24h, 7d) or an RFC 3339 time "
            "(2026-01-31T12:00:00Z)"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment >= now:
        raise click.ClickException(f"--since {value!r}: is not in the past")
    return moment


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    left = round(seconds)
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return " ".join(parts[:2])


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}%"
