"""Reusing a recent self-preservation evaluation (CONTRACT §5: a tick never counts the fleet).

A full evaluation reads the at-risk range, the status deltas and the recent marks: a
few milliseconds on a quiet machine, tens on a busy one at a million workspaces, and
every liveness tick (backstop batches, the remote pass) would pay it. So each
evaluation is kept in Redis (`registry:self_preservation:last`) for
SELF_PRESERVATION_REUSE_SECONDS, and `evaluate_recent` reuses it when all hold:

- it is younger than SELF_PRESERVATION_REUSE_SECONDS (the key's expiry);
- its fleet has at least REUSE_MIN_FLEET workspaces (small fleets are cheap to
  measure, and a few marks move their share a lot);
- it paused marking (pausing errs on the safe side: it ends at the next fresh
  evaluation, at most that many seconds later), or its share was at most half the
  threshold (so the at-risk and lost workspaces would have to double within those
  seconds for the reused answer to be wrong);
- and, when it allows marking, the shared state row is not active (one primary-key
  read): a start recorded by any evaluator stops every sweep at once.

Otherwise the sweep evaluates afresh (`state.evaluate_recent` calls `evaluate_now`), which records a start or end
exactly once (conditional UPDATEs, see `state`) and refreshes the kept evaluation.
Losing the key (expiry, a Redis restart, a crash before it was written) only means
one more fresh evaluation.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from registry.config import Settings
from registry.db import get_engine, get_redis
from registry.liveness.keys import SELF_PRESERVATION_LAST_KEY
from registry.liveness.selfpreservation.measuring import Assessment

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

REUSE_MIN_FLEET = 10_000

_ACTIVE = text("SELECT active FROM registry_self_preservation WHERE id = 1")


def remember(pipe: redis.client.Pipeline, assessment: Assessment, settings: Settings) -> None:
    """Queue the evaluation's keeping (after its commit), with its expiry."""
    kept = {
        "reason": assessment.reason,
        "backlog_seconds": assessment.backlog_seconds,
        "figures": assessment.figures,
    }
    pipe.set(
        SELF_PRESERVATION_LAST_KEY,
        json.dumps(kept),
        px=settings.self_preservation_reuse_seconds * 1000,
    )


def _reusable(kept: dict[str, Any], settings: Settings) -> Assessment | None:
    figures = kept.get("figures") or {}
    if int(figures.get("fleet") or 0) < REUSE_MIN_FLEET:
        return None
    assessment = Assessment(kept.get("reason"), float(kept.get("backlog_seconds") or 0), figures)
    if assessment.paused:
        return assessment
    share = figures.get("share")
    if share is None:
        share = figures.get("share_at_most")
    if share is None or share > settings.self_preservation_threshold / 2:
        return None
    return assessment


def reused_assessment(settings: Settings) -> Assessment | None:
    """The kept evaluation if a sweep may act on it now, else None."""
    if settings.self_preservation_reuse_seconds <= 0:
        return None
    raw = get_redis().get(SELF_PRESERVATION_LAST_KEY)
    if raw is None:
        return None
    try:
        assessment = _reusable(json.loads(raw), settings)
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring an unreadable kept self-preservation evaluation")
        return None
    if assessment is None or assessment.paused:
        return assessment
    with get_engine().connect() as conn:
        active = conn.execute(_ACTIVE).scalar_one_or_none()
        conn.rollback()
    return None if active else assessment
