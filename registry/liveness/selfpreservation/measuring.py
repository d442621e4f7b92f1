"""Measuring the registry's own trouble (CONTRACT §5); changes nothing.

Two signals, either of which pauses automatic unreachable-marking:

1. **Heartbeat backlog**: see `probes` (above HEARTBEAT_BACKLOG_SECONDS).
2. **Fleet share.** `at_risk` = live workspaces that have missed half of their
   liveness timeout (external: REMOTE_LIVENESS_STALE_AFTER / 2, others:
   LIVENESS_TTL_SECONDS / 2) — the liveness paths would mark them within one TTL
   window — plus the workspaces those paths already marked in the last TTL window and
   that are still unreachable. `share = at_risk / (live + recently marked)`, applied
   when that fleet has at least 20 workspaces, against SELF_PRESERVATION_THRESHOLD.

Every part costs in proportion to what it counts, never to the fleet: `live` comes
from the trigger-kept status counts (`counts`), `at_risk` is an index range on
`ix_workspaces_live_heartbeat (last_heartbeat_at, runtime)` (the runtime is tested
inside the index), and the recent marks are a range on the partial index
`ix_structure_events_liveness_marks`.

Every staleness cutoff of the liveness paths is also extended by the measured backlog
(`Assessment.backlog_seconds`): a heartbeat waiting in the queue is not the agent's
fault, and this covers the minute before the backlog crosses its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.liveness.selfpreservation.counts import live_count
from registry.liveness.selfpreservation.probes import measure_backlog
from registry.statuses import EXTERNAL_RUNTIME

# Reasons recorded by the automatic (liveness) paths; the fleet share counts them.
LIVENESS_EXPIRED = "liveness_expired"
HEARTBEAT_STALE = "heartbeat_stale"
LIVENESS_REASONS: tuple[str, ...] = (LIVENESS_EXPIRED, HEARTBEAT_STALE)

MIN_FLEET = 20
REASON_BACKLOG = "heartbeat_backlog"
REASON_FLEET_SHARE = "fleet_share"


@dataclass(frozen=True)
class FleetShare:
    at_risk: int
    live: int
    recently_marked: int  # liveness marks in the last TTL window (events; an upper bound)
    # Of those, workspaces still unreachable: counted only when the bound could matter.
    recently_unreachable: int | None
    share_at_most: float | None  # with recently_unreachable = recently_marked
    share: float | None  # exact; None when not needed (or an empty fleet)
    pending_deltas: int  # status deltas not folded yet (see counts)

    @property
    def fleet(self) -> int:
        lost = (
            self.recently_marked if self.recently_unreachable is None else self.recently_unreachable
        )
        return self.live + lost


# Index range on ix_workspaces_live_heartbeat (the shorter cutoff); the per-runtime
# cutoff is tested on the index's own columns, so no heap visit decides anything.
AT_RISK = text(
    f"""
    SELECT count(*) FROM workspaces w
    WHERE w.status IN ('online', 'degraded')
      AND w.last_heartbeat_at < now() - make_interval(secs => :earliest)
      AND (
        (w.runtime = '{EXTERNAL_RUNTIME}'
         AND w.last_heartbeat_at < now() - make_interval(secs => :external_after))
        OR (w.runtime <> '{EXTERNAL_RUNTIME}'
            AND w.last_heartbeat_at < now() - make_interval(secs => :internal_after))
      )
    """
)

_REASONS_SQL = ", ".join(f"'{r}'" for r in LIVENESS_REASONS)
# The WHERE repeats the predicate of ix_structure_events_liveness_marks literally, so
# the planner uses it: a range over the recent liveness marks only.
_MARKS = f"""
    e.created_at > now() - make_interval(secs => :window)
    AND e.event_type IN ('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT')
    AND (e.payload ->> 'reason') IN ({_REASONS_SQL})
"""
# An index-only count: an upper bound of the workspaces still unreachable.
RECENTLY_MARKED = text(f"SELECT count(*) FROM structure_events e WHERE {_MARKS}")
# The exact figure: each mark looked up by primary key (still unreachable?).
RECENTLY_UNREACHABLE = text(
    f"""
    SELECT count(DISTINCT e.workspace_id)
    FROM structure_events e
    JOIN workspaces w ON w.id = e.workspace_id
    WHERE {_MARKS}
      AND w.status IN ('offline', 'awaiting_agent')
    """
)


def at_risk_params(settings: Settings, backlog: float) -> dict[str, float]:
    external_after = settings.remote_liveness_stale_after / 2 + backlog
    internal_after = settings.liveness_ttl_seconds / 2 + backlog
    return {
        "earliest": min(external_after, internal_after),
        "external_after": external_after,
        "internal_after": internal_after,
    }


_NO_PARALLEL = text("SET LOCAL max_parallel_workers_per_gather = 0")


def _share(at_risk: int, live: int, lost: int) -> float | None:
    fleet = live + lost
    return (at_risk + lost) / fleet if fleet > 0 else None


def measure_fleet_share(conn: Connection, settings: Settings, backlog: float) -> FleetShare:
    """The share, exact whenever it could cross the threshold.

    The share grows with the recently-unreachable count, so the count of recent marks
    (cheap, index-only) gives an upper bound; only when that bound is above the
    threshold, for a fleet big enough to count, are the marks joined to their
    workspaces for the exact figure.
    """
    window = {"window": settings.liveness_ttl_seconds}
    # Each count below reads a few thousand index entries. On a big table the planner
    # would start parallel workers for them, and starting workers costs far more than
    # the scan (measured: 200 ms against 2 ms at a million workspaces).
    conn.execute(_NO_PARALLEL)
    at_risk = int(conn.execute(AT_RISK, at_risk_params(settings, backlog)).scalar_one())
    counted = live_count(conn)
    marked = int(conn.execute(RECENTLY_MARKED, window).scalar_one())
    bound = _share(at_risk, counted.live, marked)
    lost: int | None = None
    share: float | None = None
    if counted.live + marked >= MIN_FLEET and (bound or 0) > settings.self_preservation_threshold:
        lost = int(conn.execute(RECENTLY_UNREACHABLE, window).scalar_one())
        share = _share(at_risk, counted.live, lost)
    return FleetShare(at_risk, counted.live, marked, lost, bound, share, counted.pending)


@dataclass(frozen=True)
class Assessment:
    reason: str | None  # None: no trouble of the registry's own
    backlog_seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    pending_deltas: int = 0  # for the evaluator: fold the status deltas when many wait

    @property
    def paused(self) -> bool:
        return self.reason is not None


def assess(conn: Connection, settings: Settings) -> Assessment:
    """Measure both signals; changes nothing."""
    backlog = measure_backlog(conn)
    fleet = measure_fleet_share(conn, settings, backlog.seconds)
    threshold = settings.self_preservation_threshold
    figures: dict[str, Any] = {
        "backlog_seconds": round(backlog.seconds, 1),
        "backlog_threshold_seconds": settings.heartbeat_backlog_seconds,
        "waiting_probe_age_seconds": _rounded(backlog.waiting_probe_age),
        "last_probe_lag_seconds": _rounded(backlog.last_probe_lag),
        "at_risk": fleet.at_risk,
        "live": fleet.live,
        "recently_marked": fleet.recently_marked,
        "recently_unreachable": fleet.recently_unreachable,
        "fleet": fleet.fleet,
        "share": _rounded(fleet.share, 3),
        "share_at_most": _rounded(fleet.share_at_most, 3),
        "share_threshold": threshold,
        "min_fleet": MIN_FLEET,
    }
    reason = None
    if backlog.seconds > settings.heartbeat_backlog_seconds:
        reason = REASON_BACKLOG
    elif fleet.fleet >= MIN_FLEET and (fleet.share or 0) > threshold:
        reason = REASON_FLEET_SHARE
    return Assessment(reason, backlog.seconds, figures, fleet.pending_deltas)


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
