"""Self-preservation (CONTRACT §5): never mark workspaces unreachable for the registry's own trouble.

In a queue-based registry a stalled or backlogged heartbeat consumer lets every
liveness key expire while every agent is alive and sending. So the automatic paths
that mark a workspace unreachable — the liveness listener, the stale-heartbeat
backstop and the remote-agent pass of the health sweep — first ask `evaluate`, and
pause while either signal holds:

1. **Heartbeat backlog.** Celery messages carry no enqueue time, and Redis and
   RabbitMQ expose queue age differently, so the registry measures the queue the way
   a heartbeat experiences it: the backstop and health sweeps enqueue a tiny
   `registry.heartbeat_probe` task on `registry.heartbeats`, after writing a row in
   `heartbeat_probes` (`sent_at`, database clock); the heartbeat consumer that runs it
   stamps `consumed_at` (database clock). The backlog is the larger of
   - the age of the oldest probe still waiting (among those sent after the newest
     consumed one: older ones were overtaken or lost), and
   - the lag (`consumed_at - sent_at`) of the newest consumed probe.
   It counts as backlogged above HEARTBEAT_BACKLOG_SECONDS. A new probe is sent when
   none is waiting, or when the one waiting is older than that threshold (a probe
   lost with a purged queue must not hold the registry paused forever).
2. **Fleet share.** `at_risk` = live workspaces that have missed half of their
   liveness timeout (external: REMOTE_LIVENESS_STALE_AFTER / 2, others:
   LIVENESS_TTL_SECONDS / 2) — the liveness paths would mark them within one TTL
   window — plus the workspaces those paths already marked in the last TTL window and
   that are still unreachable. `share = at_risk / (live + recently marked)`, applied
   when that fleet has at least 20 workspaces, against SELF_PRESERVATION_THRESHOLD.

Every staleness cutoff of the liveness paths is also extended by the measured
backlog (`Assessment.backlog_seconds`): a heartbeat waiting in the queue is not the
agent's fault, and this covers the minute before the backlog crosses its threshold.

The state lives in PostgreSQL (`registry_self_preservation`, one row) so every worker,
beat and listener agree. Start and end are conditional UPDATEs: several evaluators
record one `REGISTRY_SELF_PRESERVATION {active: true, reason, figures}` event when it
starts and one `{active: false}` when it ends. Explicit signals (container gone,
provisioning timeout, removal) never ask and are never paused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, text

from registry import metrics
from registry.config import Settings
from registry.db import get_engine
from registry.jsontext import dumps
from registry.statuses import EXTERNAL_RUNTIME, EventType
from registry.uow import UnitOfWork, record_event_on_commit, unit_of_work

log = logging.getLogger(__name__)

# Reasons recorded by the automatic (liveness) paths; the fleet share counts them.
LIVENESS_EXPIRED = "liveness_expired"
HEARTBEAT_STALE = "heartbeat_stale"
LIVENESS_REASONS: tuple[str, ...] = (LIVENESS_EXPIRED, HEARTBEAT_STALE)

MIN_FLEET = 20
REASON_BACKLOG = "heartbeat_backlog"
REASON_FLEET_SHARE = "fleet_share"


class HeartbeatProbePayload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    probe_id: int = Field(ge=1)
    sent_at: float | None = None  # epoch seconds, database clock (for the log only)


# ---------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Backlog:
    seconds: float  # 0.0 when no probe says otherwise
    waiting_probe_age: float | None
    last_probe_lag: float | None


_MEASURE_BACKLOG = text(
    """
    WITH latest AS (
        SELECT sent_at, consumed_at FROM heartbeat_probes
        WHERE consumed_at IS NOT NULL
        ORDER BY sent_at DESC
        LIMIT 1
    )
    SELECT
        (SELECT EXTRACT(EPOCH FROM now() - min(p.sent_at))
         FROM heartbeat_probes p
         WHERE p.consumed_at IS NULL
           AND p.sent_at > COALESCE((SELECT sent_at FROM latest), '-infinity')
        ) AS waiting_age,
        (SELECT EXTRACT(EPOCH FROM consumed_at - sent_at) FROM latest) AS last_lag
    """
)


def measure_backlog(conn: Connection) -> Backlog:
    row = conn.execute(_MEASURE_BACKLOG).one()
    waiting = float(row.waiting_age) if row.waiting_age is not None else None
    lag = float(row.last_lag) if row.last_lag is not None else None
    return Backlog(max(waiting or 0.0, lag or 0.0), waiting, lag)


@dataclass(frozen=True)
class FleetShare:
    at_risk: int
    recently_unreachable: int
    fleet: int | None  # None: too few at risk to matter, so the fleet was not counted
    share: float | None


# Index range on ix_workspaces_live_heartbeat (the shorter cutoff), then the exact
# per-runtime cutoff: cost follows the workspaces at risk, not the fleet.
_AT_RISK = text(
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

# Range on ix_structure_events_created_at: cost follows the recent events.
_RECENTLY_UNREACHABLE = text(
    """
    SELECT count(DISTINCT e.workspace_id)
    FROM structure_events e
    JOIN workspaces w ON w.id = e.workspace_id
    WHERE e.created_at > now() - make_interval(secs => :window)
      AND e.event_type IN ('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT')
      AND e.payload ->> 'reason' = ANY(:reasons)
      AND w.status IN ('offline', 'awaiting_agent')
    """
)

_LIVE = text("SELECT count(*) FROM workspaces WHERE status IN ('online', 'degraded')")


def measure_fleet_share(conn: Connection, settings: Settings, backlog: float) -> FleetShare:
    external_after = settings.remote_liveness_stale_after / 2 + backlog
    internal_after = settings.liveness_ttl_seconds / 2 + backlog
    at_risk = conn.execute(
        _AT_RISK,
        {
            "earliest": min(external_after, internal_after),
            "external_after": external_after,
            "internal_after": internal_after,
        },
    ).scalar_one()
    lost = conn.execute(
        _RECENTLY_UNREACHABLE,
        {"window": settings.liveness_ttl_seconds, "reasons": list(LIVENESS_REASONS)},
    ).scalar_one()
    # share > threshold needs at_risk + lost > threshold * fleet >= threshold * MIN_FLEET:
    # below that, counting the whole live fleet would buy nothing.
    if at_risk + lost <= settings.self_preservation_threshold * MIN_FLEET:
        return FleetShare(at_risk, lost, None, None)
    fleet = conn.execute(_LIVE).scalar_one() + lost
    return FleetShare(at_risk, lost, fleet, (at_risk + lost) / fleet if fleet else None)


@dataclass(frozen=True)
class Assessment:
    reason: str | None  # None: no trouble of the registry's own
    backlog_seconds: float
    figures: dict[str, Any] = field(default_factory=dict)

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
        "recently_unreachable": fleet.recently_unreachable,
        "fleet": fleet.fleet,
        "share": _rounded(fleet.share, 3),
        "share_threshold": threshold,
        "min_fleet": MIN_FLEET,
    }
    reason = None
    if backlog.seconds > settings.heartbeat_backlog_seconds:
        reason = REASON_BACKLOG
    elif fleet.fleet is not None and fleet.fleet >= MIN_FLEET and (fleet.share or 0) > threshold:
        reason = REASON_FLEET_SHARE
    return Assessment(reason, backlog.seconds, figures)


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------
# The shared state and its transitions

_START = text(
    """
    UPDATE registry_self_preservation
    SET active = true, reason = :reason, figures = CAST(:figures AS jsonb),
        since = now(), updated_at = now()
    WHERE id = 1 AND NOT active
    RETURNING since
    """
)
_REFRESH = text(
    """
    UPDATE registry_self_preservation
    SET reason = :reason, figures = CAST(:figures AS jsonb), updated_at = now()
    WHERE id = 1 AND active
    """
)
_END = text(
    """
    UPDATE registry_self_preservation
    SET active = false, updated_at = now()
    WHERE id = 1 AND active
    RETURNING reason, EXTRACT(EPOCH FROM now() - since) AS duration
    """
)


def evaluate(uow: UnitOfWork, settings: Settings) -> Assessment:
    """Assess and record a start or an end; returns whether marking must pause.

    The start and end UPDATEs are conditional on the current state, so of several
    evaluators deciding the same thing at once only the first records the event (the
    others wait for its row lock, then find nothing to change).
    """
    assessment = assess(uow.conn, settings)
    if assessment.paused:
        params = {"reason": assessment.reason, "figures": dumps(assessment.figures)}
        if uow.conn.execute(_START, params).first() is not None:
            record_event_on_commit(
                uow,
                EventType.REGISTRY_SELF_PRESERVATION,
                None,
                {"active": True, "reason": assessment.reason, "figures": assessment.figures},
            )
            log.warning(
                "self-preservation ON (%s): automatic unreachable-marking paused; %s",
                assessment.reason,
                assessment.figures,
            )
        else:
            uow.conn.execute(_REFRESH, params)
    else:
        ended = uow.conn.execute(_END).first()
        if ended is not None:
            duration = round(float(ended.duration), 1)
            record_event_on_commit(
                uow,
                EventType.REGISTRY_SELF_PRESERVATION,
                None,
                {"active": False, "reason": ended.reason, "duration_seconds": duration},
            )
            log.warning(
                "self-preservation OFF after %.0f s (was %s): marking resumes; %s",
                duration,
                ended.reason,
                assessment.figures,
            )
    metrics.set_self_preservation(assessment.paused)
    return assessment


def evaluate_now(settings: Settings) -> Assessment:
    """`evaluate` in its own transaction (its event is published on commit)."""
    with unit_of_work() as uow:
        return evaluate(uow, settings)


class SelfPreservationGate:
    """For a long-running process (the listener): evaluates at most every `refresh` s."""

    def __init__(
        self,
        settings: Settings,
        *,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._checked_at: float | None = None
        self._assessment: Assessment | None = None

    def assessment(self) -> Assessment:
        now = self._clock()
        if (
            self._assessment is None
            or self._checked_at is None
            or now - self._checked_at >= self.refresh_seconds
        ):
            self._assessment = evaluate_now(self.settings)
            self._checked_at = now
        return self._assessment


_STATE = text(
    """
    SELECT active, reason, figures, since, updated_at,
           EXTRACT(EPOCH FROM now() - since) AS active_for
    FROM registry_self_preservation WHERE id = 1
    """
)


def current_state(conn: Connection) -> dict[str, Any]:
    """What the shared state says (for operators: `molecule-registry self-preservation`)."""
    row = conn.execute(_STATE).one()
    backlog = measure_backlog(conn)
    return {
        "active": row.active,
        "reason": row.reason if row.active else None,
        "since": row.since.isoformat() if row.active and row.since else None,
        "active_for_seconds": round(float(row.active_for), 1) if row.active else None,
        # Kept in the row after an episode ends; shown only while they explain a pause.
        "figures": row.figures if row.active else None,
        "evaluated_at": row.updated_at.isoformat(),
        "backlog_seconds": round(backlog.seconds, 1),
    }


# ---------------------------------------------------------------------------
# Probes

_OPEN_PROBE = text(
    """
    INSERT INTO heartbeat_probes (sent_at)
    SELECT now()
    WHERE NOT EXISTS (
        SELECT 1 FROM heartbeat_probes
        WHERE consumed_at IS NULL AND sent_at > now() - make_interval(secs => :resend_after)
    )
    RETURNING id, EXTRACT(EPOCH FROM sent_at) AS sent_at
    """
)

_CONSUME_PROBE = text(
    """
    WITH hit AS (
        UPDATE heartbeat_probes SET consumed_at = now()
        WHERE id = :id AND consumed_at IS NULL
        RETURNING sent_at, consumed_at
    ), superseded AS (
        -- Probes sent before this one are consumed, or were overtaken or lost: the
        -- queue has moved past them, and only the newest consumed one matters.
        DELETE FROM heartbeat_probes p USING hit WHERE p.sent_at < hit.sent_at
    )
    SELECT EXTRACT(EPOCH FROM consumed_at - sent_at) AS lag FROM hit
    """
)


def send_probe_if_due(
    settings: Settings,
    send: Callable[[dict[str, Any]], object],
    engine: Engine | None = None,
) -> int | None:
    """Record and enqueue a heartbeat-queue probe unless one is already waiting.

    `send(payload)` enqueues `registry.heartbeat_probe` on `registry.heartbeats` (the
    caller owns the broker). The row is committed first, so the consumer finds it.
    Returns the probe id, or None when none was due or the broker refused it.
    """
    engine = engine or get_engine()
    with engine.begin() as conn:
        row = conn.execute(
            _OPEN_PROBE, {"resend_after": settings.heartbeat_backlog_seconds}
        ).first()
    if row is None:
        return None
    try:
        send({"probe_id": row.id, "sent_at": float(row.sent_at)})
    except Exception as exc:  # broker down: a probe that never left must not read as backlog
        log.warning("could not enqueue heartbeat probe %d: %s", row.id, exc)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM heartbeat_probes WHERE id = :id"), {"id": row.id})
        return None
    return int(row.id)


def record_probe(conn: Connection, probe: HeartbeatProbePayload) -> float | None:
    """Stamp a probe consumed; its queue lag in seconds (None if it was superseded)."""
    row = conn.execute(_CONSUME_PROBE, {"id": probe.probe_id}).first()
    return None if row is None else float(row.lag)
