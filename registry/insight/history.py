"""Availability history (CONTRACT §13), read from structure_events.

A workspace is *up* while `online` or `degraded` (alive), *down* while `offline`,
`awaiting_agent` or `failed`; other statuses (provisioning, paused, hibernating,
hibernated, removed) are planned or not yet live and count neither way. Availability
is up time over up + down time; an outage is a maximal down stretch; the mean time
to recovery is the mean length of the outages that ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from registry.statuses import STATUS_AFTER_EVENT, Status

UP: frozenset[str] = frozenset({Status.ONLINE, Status.DEGRADED})
DOWN: frozenset[str] = frozenset({Status.OFFLINE, Status.AWAITING_AGENT, Status.FAILED})
STATUS_EVENT_TYPES: list[str] = [str(t) for t in STATUS_AFTER_EVENT]


class UnknownWorkspace(LookupError):
    pass


@dataclass
class Segment:
    start: datetime
    end: datetime
    status: str | None  # None: unknown (before the first event we can read)

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


@dataclass
class History:
    workspace_id: str
    name: str
    status: str
    since: datetime
    until: datetime
    segments: list[Segment] = field(default_factory=list)

    def _total(self, statuses: frozenset[str]) -> float:
        return sum(s.seconds for s in self.segments if s.status in statuses)

    @property
    def availability(self) -> float | None:
        up, down = self._total(UP), self._total(DOWN)
        return None if up + down == 0 else 100.0 * up / (up + down)

    def outages(self) -> list[tuple[datetime, datetime | None, float]]:
        """(start, end or None while ongoing, seconds) of each maximal down stretch."""
        found: list[tuple[datetime, datetime | None, float]] = []
        start: datetime | None = None
        for seg in self.segments:
            if seg.status in DOWN:
                start = start or seg.start
                continue
            if start is not None:
                found.append((start, seg.start, (seg.start - start).total_seconds()))
                start = None
        if start is not None:
            found.append((start, None, (self.until - start).total_seconds()))
        return found

    @property
    def mttr_seconds(self) -> float | None:
        ended = [secs for _, end, secs in self.outages() if end is not None]
        return sum(ended) / len(ended) if ended else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "name": self.name,
            "status": self.status,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "availability_percent": _round(self.availability),
            "outages": [
                {"start": s.isoformat(), "end": e.isoformat() if e else None, "seconds": round(n)}
                for s, e, n in self.outages()
            ],
            "mttr_seconds": _round(self.mttr_seconds),
            "timeline": [
                {"start": s.start.isoformat(), "end": s.end.isoformat(), "status": s.status}
                for s in self.segments
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def status_before(
    event_type: str, payload: dict[str, Any], previous_status: str | None = None
) -> str | None:
    """The status a workspace was in before a status event, when the event says it
    (a registration's WORKSPACE_ONLINE: its row's `previous_status`, '' for none)."""
    if event_type == "WORKSPACE_ONLINE":
        return payload.get("recovered_from") or previous_status or None
    if event_type == "WORKSPACE_DEGRADED":
        return str(Status.ONLINE)
    return payload.get("previous_status")


_WORKSPACE = text(
    "SELECT id::text AS id, name, status, created_at, now() AS now FROM workspaces "
    "WHERE id = CAST(:id AS uuid)"
)
_EVENTS = text(
    """
    SELECT event_type, payload, previous_status, created_at FROM structure_events
    WHERE workspace_id = CAST(:id AS uuid) AND created_at >= :since
      AND event_type = ANY(:types)
    -- Time order (ids follow commit order only roughly; a backfill may insert late).
    ORDER BY created_at, id
    """
)
# The newest status event before the window: read backwards on the workspace's index
# (id order), then the last few ordered by time. Ordering the whole read by time would
# let the planner walk the time index back through the whole fleet's history.
_BEFORE = text(
    """
    SELECT event_type FROM (
        SELECT event_type, created_at, id FROM structure_events
        WHERE workspace_id = CAST(:id AS uuid) AND created_at < :since
          AND event_type = ANY(:types)
        ORDER BY id DESC LIMIT 20
    ) newest
    ORDER BY created_at DESC, id DESC LIMIT 1
    """
)


def workspace_history(conn: Connection, workspace_id: str, since: datetime) -> History:
    """The status timeline of one workspace from `since` to now (database clock)."""
    ws = conn.execute(_WORKSPACE, {"id": workspace_id}).one_or_none()
    if ws is None:
        raise UnknownWorkspace(workspace_id)
    params = {"id": workspace_id, "since": since, "types": STATUS_EVENT_TYPES}
    events = conn.execute(_EVENTS, params).all()
    start = max(since, ws.created_at)
    before = conn.execute(_BEFORE, params).scalar_one_or_none()
    if before is not None:
        status: str | None = str(STATUS_AFTER_EVENT[before])  # type: ignore[index]
    elif events:
        status = status_before(events[0].event_type, events[0].payload, events[0].previous_status)
    else:
        status = ws.status
    history = History(ws.id, ws.name, ws.status, since, ws.now)
    for event in events:
        at = max(event.created_at, start)
        history.segments.append(Segment(start, at, status))
        start, status = at, str(STATUS_AFTER_EVENT[event.event_type])  # type: ignore[index]
    history.segments.append(Segment(start, ws.now, status))
    history.segments = [s for s in history.segments if s.seconds > 0]
    return history
