"""History retention (CONTRACT §3): `structure_events` is kept for EVENTS_RETENTION_DAYS.

`prune_events` deletes rows older than the window in bounded batches, each its own
short transaction, oldest first along `ix_structure_events_created_at`, so no lock is
held for longer than one batch and the table's size follows the window, not the
platform's age. It never deletes an event still in `event_outbox`: that one has not
been published yet, and the relay needs it. Two runs at once are harmless: each batch
claims its rows `FOR UPDATE SKIP LOCKED`, so they split the work instead of waiting
for, or deleting, the same rows. A run stops after `max_batches`; `more` says the
caller should run again (the task re-queues itself).

`retention_horizon(conn)` is the oldest `created_at` still guaranteed to be kept (None
while retention is off): what a subscriber's database replay compares its starting
point with before it answers "too old".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from registry.config import Settings, get_settings
from registry.db import get_engine

log = logging.getLogger(__name__)

BATCH_SIZE = 5_000
MAX_BATCHES = 20

_HORIZON = text("SELECT now() - make_interval(days => :days)")

PRUNE_BATCH_STATEMENT = text(
    """
    WITH batch AS (
        SELECT e.id FROM structure_events e
        WHERE e.created_at < now() - make_interval(days => :days)
          -- Unpublished (still in the outbox): the relay needs it; keep it.
          AND NOT EXISTS (SELECT 1 FROM event_outbox o WHERE o.event_id = e.id)
        ORDER BY e.created_at
        LIMIT :limit
        -- A second pruner takes the next rows instead of waiting for these.
        FOR UPDATE OF e SKIP LOCKED
    )
    -- By primary key: never a hash of the whole table against the batch.
    DELETE FROM structure_events e WHERE e.id = ANY(ARRAY(SELECT id FROM batch))
    """
)


def retention_days(settings: Settings | None = None) -> int:
    """EVENTS_RETENTION_DAYS; 0 means events are kept forever."""
    return (settings or get_settings()).events_retention_days


def retention_horizon(conn: Connection, settings: Settings | None = None) -> datetime | None:
    """Events created before this (database clock) may have been pruned; None: none are."""
    days = retention_days(settings)
    if days == 0:
        return None
    horizon: datetime = conn.execute(_HORIZON, {"days": days}).scalar_one()
    return horizon


def prune_batch(conn: Connection, days: int, limit: int = BATCH_SIZE) -> int:
    """Delete up to `limit` events older than `days` days (none still in the outbox)."""
    return conn.execute(PRUNE_BATCH_STATEMENT, {"days": days, "limit": limit}).rowcount


@dataclass
class PruneRun:
    deleted: int = 0
    batches: int = 0
    longest_batch_seconds: float = 0.0  # the longest any batch held its row locks
    more: bool = False

    def result(self) -> dict[str, object]:
        return {
            "status": "ok",
            "changed": self.deleted,
            "batches": self.batches,
            "longest_batch_ms": round(self.longest_batch_seconds * 1000, 1),
            "more": self.more,
        }


def prune_events(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> PruneRun:
    """Delete events older than the retention window, at most `max_batches` batches."""
    run = PruneRun()
    days = retention_days(settings)
    if days == 0:
        return run
    engine = engine or get_engine()
    while run.batches < max_batches:
        started = time.perf_counter()
        with engine.begin() as conn:  # one short transaction per batch
            deleted = prune_batch(conn, days, batch_size)
        run.longest_batch_seconds = max(run.longest_batch_seconds, time.perf_counter() - started)
        run.batches += 1
        run.deleted += deleted
        if deleted < batch_size:
            break
    else:
        run.more = True
    if run.deleted:
        log.info(
            "pruned %d event(s) older than %d days in %d batch(es)%s",
            run.deleted,
            days,
            run.batches,
            "; more to prune" if run.more else "",
        )
    return run
