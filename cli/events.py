"""`molecule-registry events`: the event stream, live or replayed, one line per event."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import click
from sqlalchemy import Engine, text

from cli.base import friendly_errors, main, reachable_stores
from cli.safe import terminal_safe
from registry.statuses import BROADCAST_ONLY_EVENTS, EventType

BROADCAST_ONLY_TYPES = frozenset(str(t) for t in BROADCAST_ONLY_EVENTS)

DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
POSITION = re.compile(r"^\d+-\d+(?::\d*(?::[0-9A-Za-z]*(?::[0-9,]*)?)?)?$")


def parse_since(value: str, now: datetime | None = None) -> str | datetime:
    """`--since`: now | start | a stream id (or saved position) | RFC 3339 | 10m, 2h, 1h30m."""
    raw = value.strip()
    lowered = raw.lower()
    if lowered in ("now", "start"):
        return lowered
    if POSITION.match(raw):
        return raw
    if DURATION.match(lowered):
        seconds = sum(float(n) * UNIT_SECONDS[unit] for n, unit in DURATION_PART.findall(lowered))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use 'start', 'now', a stream id (1712345678901-0), an RFC 3339 "
            "time (2025-01-31T12:00:00Z) or a duration ago (90s, 10m, 2h, 1d)",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # no zone: UTC


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_types(values: Iterable[str]) -> set[str]:
    """`--type`: event type names, any case, `WORKSPACE_` optional (offline, degraded)."""
    known = {t.value for t in EventType}
    chosen: set[str] = set()
    for raw in _split(values):
        name = raw.upper().replace("-", "_")
        for candidate in (name, f"WORKSPACE_{name}"):
            if candidate in known:
                chosen.add(candidate)
                break
        else:
            raise click.BadParameter(
                f"{raw!r} is not an event type; one of: {', '.join(sorted(known))}",
                param_hint="--type",
            )
    return chosen


# An id prefix is a range of the primary key (uuid order is the order of the lowercase
# text), so no index on `id::text` is needed (every status change would maintain it).
_MATCH_WORKSPACES = text(
    """
    SELECT id FROM workspaces
    WHERE name = :value
       OR (:is_prefix AND id BETWEEN CAST(:low AS uuid) AND CAST(:high AS uuid)
           AND id::text LIKE :prefix)
    """
)
_UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_NIL = "00000000-0000-0000-0000-000000000000"


def id_prefix_bounds(prefix: str) -> tuple[str, str] | None:
    """The lowest and highest uuid starting with `prefix` (hex digits, dashes where a
    uuid has them), or None when no uuid can start with it."""
    prefix = prefix.lower()
    if len(prefix) > len(_UUID_SHAPE) or any(
        (shape == "-") != (char == "-") or (char != "-" and char not in "0123456789abcdef")
        for char, shape in zip(prefix, _UUID_SHAPE, strict=False)
    ):
        return None
    rest = _UUID_SHAPE[len(prefix) :]
    return prefix + rest.replace("x", "0"), prefix + rest.replace("x", "f")


def resolve_workspaces(engine: Engine, values: Iterable[str]) -> set[str]:
    """`--workspace`: a full id, the short id the output shows (any id prefix), or a name."""
    chosen: set[str] = set()
    for raw in _split(values):
        try:
            chosen.add(str(UUID(raw)))
            continue
        except ValueError:
            pass
        bounds = id_prefix_bounds(raw) if len(raw) >= 4 else None
        low, high = bounds or (_NIL, _NIL)
        with engine.connect() as conn:
            ids = conn.execute(
                _MATCH_WORKSPACES,
                {
                    "value": raw,
                    "is_prefix": bounds is not None,
                    "low": low,
                    "high": high,
                    "prefix": raw.lower() + "%",
                },
            ).scalars()
            found = {str(i) for i in ids}
        if not found:
            raise click.BadParameter(f"no workspace matches {raw!r}", param_hint="--workspace")
        chosen |= found
    return chosen


class WorkspaceNames:
    """Workspace names for the human format, fetched once per id."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._names: dict[str, str | None] = {}

    def __call__(self, workspace_id: str | None) -> str | None:
        if workspace_id is None:
            return None
        if workspace_id not in self._names:
            try:
                with self._engine.connect() as conn:
                    self._names[workspace_id] = conn.execute(
                        text("SELECT name FROM workspaces WHERE id = CAST(:id AS uuid)"),
                        {"id": workspace_id},
                    ).scalar()
            except Exception:  # a name is a nicety: never stop the stream for it
                return None
        return self._names[workspace_id]


@main.command("events")
@click.option(
    "--since",
    metavar="POINT",
    help="Start from: now (default when following), start (the oldest event the stream "
    "holds; default with --no-follow), a stream id or saved position, an RFC 3339 time, "
    "or a duration ago (10m, 2h). Events the stream no longer holds are replayed from "
    "the database.",
)
@click.option(
    "-w",
    "--workspace",
    "workspaces",
    multiple=True,
    metavar="ID|NAME",
    help="Only these workspaces: id, short id or name (repeatable, or comma-separated).",
)
@click.option(
    "-t",
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only these event types, e.g. WORKSPACE_OFFLINE or offline (repeatable, or "
    "comma-separated).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("-n", "--limit", type=click.IntRange(min=1), metavar="N", help="Exit after N events.")
@click.option("--no-follow", is_flag=True, help="Exit once every event up to now has been printed.")
@friendly_errors
def events(
    since: str | None,
    workspaces: tuple[str, ...],
    types: tuple[str, ...],
    as_json: bool,
    limit: int | None,
    no_follow: bool,
) -> None:
    """Print the registry's events, live, one line each.

    A line is `time (UTC)  short-id name  TYPE  gist`. When the stream has lost
    events after the starting point (capped, or Redis restarted), a notice goes to
    stderr and the recorded ones are replayed from the database, marked (replayed);
    when that point is older than EVENTS_RETENTION_DAYS, a "too old" notice says so.
    While following, heartbeats and task updates are shown live from the broadcast
    channel (they are not kept in the stream).
    """
    from registry.events.subscriber import StreamGap, Subscriber
    from registry.events.text import event_line
    from registry.jsontext import dumps

    start = parse_since(since) if since else ("now" if not no_follow else "start")
    chosen_types = parse_types(types)
    # Fail at once when a store is unreachable; once running, the subscriber rides
    # out outages by itself.
    engine, client = reachable_stores()
    chosen_workspaces = resolve_workspaces(engine, workspaces)
    names = WorkspaceNames(engine)

    # Heartbeats and task updates travel on the channel only (CONTRACT §7): a live
    # view listens there too, unless the chosen types leave them out.
    live = not no_follow and (not chosen_types or bool(chosen_types & BROADCAST_ONLY_TYPES))
    subscriber = Subscriber(client, engine, since=start, broadcast=live)
    printed = 0
    try:
        for item in subscriber.events(follow=not no_follow):
            if isinstance(item, StreamGap):
                click.echo(f"-- {item.describe()}", err=True)
                continue
            if chosen_types and item.type not in chosen_types:
                continue
            if chosen_workspaces and item.workspace_id not in chosen_workspaces:
                continue
            if as_json:
                click.echo(dumps(item.as_dict()))
            else:
                # Names, URLs and card fields come from agents: shown escaped, never run.
                click.echo(terminal_safe(event_line(item, names(item.workspace_id))))
            printed += 1
            if limit is not None and printed >= limit:
                break
    except KeyboardInterrupt:  # Ctrl-C is how a live stream ends
        pass
    finally:
        subscriber.close()
