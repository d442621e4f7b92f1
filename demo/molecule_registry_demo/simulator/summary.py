"""The demo's live summary: statuses from the database, heartbeats and status events
from the registry's own event stream, read with `registry.events.subscriber.Subscriber` as
any subscriber reads it (deduplicated, a trimmed stream filled from the database).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy import Engine, text

from molecule_registry_demo.simulator.behaviours import SHOWCASE_STATUS, Behaviour
from registry.events.subscriber import StreamGap, Subscriber
from registry.events.text import describe
from registry.statuses import ALL_STATUSES, BROADCAST_ONLY_EVENTS, EventType

# The status a recorded event announces.
EVENT_STATUS: dict[str, str] = {
    EventType.WORKSPACE_ONLINE: "online",
    EventType.WORKSPACE_DEGRADED: "degraded",
    EventType.WORKSPACE_OFFLINE: "offline",
    EventType.WORKSPACE_AWAITING_AGENT: "awaiting_agent",
    EventType.WORKSPACE_PROVISION_FAILED: "failed",
    EventType.WORKSPACE_HIBERNATED: "hibernated",
    EventType.WORKSPACE_REMOVED: "removed",
}
RATE_WINDOW_SECONDS = 5.0


@dataclass
class StatusEvent:
    at: float  # seconds since the demo's fleet started
    event: str
    name: str
    detail: str


@dataclass
class Snapshot:
    elapsed: float
    counts: dict[str, int]
    sent_rate: float
    applied_rate: float
    sent_total: int
    errors: int
    last_error: str
    new_events: list[StatusEvent] = field(default_factory=list)


# Polls of the subscriber per summary tick at most (each hands out a batch).
_MAX_POLLS_PER_TICK = 200


class LiveSummary:
    def __init__(
        self,
        engine: Engine,
        redis_client: Any,
        *,
        behaviour_of: dict[UUID, Behaviour],
        name_of: dict[UUID, str],
        stats: Any,
    ) -> None:
        self.engine = engine
        self.behaviour_of = behaviour_of
        self.name_of = {str(k): v for k, v in name_of.items()}
        self.ids = list(behaviour_of)
        self.stats = stats
        self.recent: deque[StatusEvent] = deque(maxlen=8)
        self.started = time.monotonic()
        # From now on; heartbeats come live from the broadcast channel (CONTRACT §7).
        self._events = Subscriber(redis_client, engine, broadcast=True)
        self._applied = 0
        # (time, sent, applied) samples: rates are averaged over the last few seconds.
        self._samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def refresh(self) -> Snapshot:
        now = time.monotonic()
        new_events = self._read_events(now)
        sent = self.stats.heartbeats
        self._samples.append((now, sent, self._applied))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
            self._samples.popleft()
        then, sent_then, applied_then = self._samples[0]
        span = max(now - then, 1e-6)
        return Snapshot(
            elapsed=now - self.started,
            counts=self.counts(),
            sent_rate=(sent - sent_then) / span,
            applied_rate=(self._applied - applied_then) / span,
            sent_total=sent,
            errors=self.stats.errors,
            last_error=self.stats.last_error,
            new_events=new_events,
        )

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT status, count(*) AS n FROM workspaces "
                    "WHERE id = ANY(:ids) GROUP BY status"
                ),
                {"ids": self.ids},
            ).all()
        return {row.status: row.n for row in rows}

    def _read_events(self, now: float) -> list[StatusEvent]:
        found: list[StatusEvent] = []
        # Until caught up (or, Redis being down, after one backoff). A wait of 1 ms, not
        # 0: the subscriber reads the live channel (heartbeats) only on a waiting poll.
        # Bounded, so a busy channel cannot keep the summary from printing.
        for _ in range(_MAX_POLLS_PER_TICK):
            batch = self._events.poll(block_ms=1)
            if not batch:
                break
            for item in batch:
                if isinstance(item, StreamGap):
                    continue  # its recorded events follow, replayed from the database
                workspace = item.workspace_id
                if item.type == EventType.WORKSPACE_HEARTBEAT and workspace in self.name_of:
                    self._applied += 1
                elif item.type not in BROADCAST_ONLY_EVENTS and (
                    workspace in self.name_of or not workspace
                ):
                    status_event = StatusEvent(
                        now - self.started,
                        item.type,
                        self.name_of.get(workspace or "", "(fleet-wide)"),
                        describe(item.type, item.payload),
                    )
                    self.recent.append(status_event)
                    found.append(status_event)
        return found

    def reached(self) -> dict[Behaviour, dict[str, Any]]:
        """Per behaviour: agents, the statuses its workspaces have been in, and now."""
        with self.engine.connect() as conn:
            # A laptop's workspace is created awaiting its agent; that is not the agent
            # vanishing, so only awaiting_agent after a registration counts.
            history = conn.execute(
                text(
                    "SELECT DISTINCT workspace_id, event_type FROM structure_events "
                    "WHERE workspace_id = ANY(:ids) "
                    "AND coalesce(payload->>'reason', '') <> 'created'"
                ),
                {"ids": self.ids},
            ).all()
            current = conn.execute(
                text(
                    "SELECT id, status, registered_at IS NOT NULL AS registered "
                    "FROM workspaces WHERE id = ANY(:ids)"
                ),
                {"ids": self.ids},
            ).all()
        result: dict[Behaviour, dict[str, Any]] = {
            b: {"agents": 0, "reached": set(), "now": {}} for b in Behaviour
        }
        for behaviour in self.behaviour_of.values():
            result[behaviour]["agents"] += 1
        for row in history:
            status = EVENT_STATUS.get(row.event_type)
            if status:
                result[self.behaviour_of[row.workspace_id]]["reached"].add(status)
        for row in current:
            entry = result[self.behaviour_of[row.id]]
            if row.registered or row.status != "awaiting_agent":
                entry["reached"].add(row.status)
            entry["now"][row.status] = entry["now"].get(row.status, 0) + 1
        return result


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


ORDER = ("online", "degraded", "offline", "awaiting_agent", "provisioning", "failed")
ORDER += tuple(s for s in ALL_STATUSES if s not in ORDER)


def render_board(snapshot: Snapshot, recent: deque[StatusEvent], header: str) -> str:
    """The full-screen board (a terminal)."""
    lines = [header, ""]
    total = sum(snapshot.counts.values()) or 1
    for status in ORDER:
        count = snapshot.counts.get(status, 0)
        if count or status in ORDER[:6]:
            bar = "█" * round(40 * count / total)
            lines.append(f"  {status:<15}{count:>6}  {bar}")
    lines += [
        "",
        f"  heartbeats   sent {snapshot.sent_rate:7.1f}/s   applied {snapshot.applied_rate:7.1f}/s"
        f"   (sent in all: {snapshot.sent_total})",
    ]
    if snapshot.errors:
        lines.append(f"  send errors  {snapshot.errors} (last: {snapshot.last_error})")
    lines += ["", "  recent status events"]
    lines += [f"    {format_event(event)}" for event in recent] or ["    (none yet)"]
    return "\n".join(lines)


def render_line(snapshot: Snapshot) -> str:
    """One line for a log or a pipe."""
    counts = " ".join(
        f"{status}={snapshot.counts[status]}" for status in ORDER if snapshot.counts.get(status)
    )
    return (
        f"[{clock(snapshot.elapsed)}] {counts} | heartbeats sent {snapshot.sent_rate:.1f}/s "
        f"applied {snapshot.applied_rate:.1f}/s"
        + (f" | errors {snapshot.errors}" if snapshot.errors else "")
    )


def format_event(event: StatusEvent) -> str:
    detail = f"  {event.detail}" if event.detail else ""
    return f"{clock(event.at)}  {event.event:<28} {event.name}{detail}"


def render_reached(reached: dict[Behaviour, dict[str, Any]]) -> tuple[str, list[str]]:
    """The closing table, and the behaviours that did not show their status."""
    lines = [f"  {'behaviour':<10}{'agents':>7}  {'shows':<17}  {'statuses reached':<44} now"]
    missing = []
    for behaviour in Behaviour:
        entry = reached[behaviour]
        if not entry["agents"]:
            continue
        wanted = SHOWCASE_STATUS[behaviour].value
        mark = "✓" if wanted in entry["reached"] else "✗"
        if mark == "✗":
            missing.append(behaviour.value)
        statuses = ", ".join(s for s in ORDER if s in entry["reached"])
        now = " ".join(f"{s}={n}" for s, n in sorted(entry["now"].items()))
        lines.append(
            f"  {behaviour.value:<10}{entry['agents']:>7}  {wanted:<15} {mark}   {statuses:<44} {now}"
        )
    return "\n".join(lines), missing
