"""The heartbeat-queue probes (CONTRACT §5): how backlogged the heartbeat consumer is.

Celery messages carry no enqueue time, and Redis and RabbitMQ expose queue age
differently, so the registry measures the queue the way a heartbeat experiences it:
the backstop and health sweeps enqueue a tiny `registry.heartbeat_probe` task on
`registry.heartbeats`, after writing a row in `heartbeat_probes` (`sent_at`, database
clock); the heartbeat consumer that runs it stamps `consumed_at` (database clock). The
backlog is the larger of
- the age of the oldest probe still waiting (among those sent after the newest
  consumed one: older ones were overtaken or lost), and
- the lag (`consumed_at - sent_at`) of the newest consumed probe.
A new probe is sent when none is waiting, or when the one waiting is older than
HEARTBEAT_BACKLOG_SECONDS (a probe lost with a purged queue must not hold the
registry paused forever). The table holds a handful of rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, text

from registry.config import Settings
from registry.db import get_engine

log = logging.getLogger(__name__)


class HeartbeatProbePayload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    probe_id: int = Field(ge=1)
    sent_at: float | None = None  # epoch seconds, database clock (for the log only)


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
