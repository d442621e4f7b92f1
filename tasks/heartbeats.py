"""registry.heartbeat and registry.heartbeat_batch (CONTRACT §4.2, §4.2a): fire-and-forget.

A per-message heartbeat is taken in by its own Celery strategy
(workers/heartbeat_intake.py): validated in the consumer, handed to this process's
batcher (group commit: registry/ingestion/batcher.py), and its message acknowledged only
once its batch committed. A heartbeat_batch message is a task like any other: one
transaction of its own.

A transaction failing on a dependency (database or Redis down) is tried again with
backoff inside the task, the message unacknowledged, for as long as its heartbeats can
still count (CONTRACT §4.2, freshness; registry/ingestion/batcher.py): then they are
given up as stale. Nothing is acknowledged before its commit or that verdict.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_QUEUE, HEARTBEAT_TASK
from registry import metrics
from registry.config import get_settings
from registry.ingestion.batcher import apply_until_committed, count_until, get_batcher
from registry.ingestion.intake import parse_heartbeat, report_refusal
from registry.ingestion.payloads import HeartbeatPayload, PayloadError, parse_heartbeat_batch
from registry.transient import TRANSIENT_ERRORS
from tasks.base import message_task

log = logging.getLogger(__name__)


# Retries happen inside the batcher, bounded by the heartbeat's freshness, not by the
# base task's autoretry (autoretry_for=()). A worker takes these messages in through
# their own strategy (workers/heartbeat_intake.py: validated in the consumer, applied
# by group commit, acknowledged after the commit); the body below is the same path for
# a direct call (`apply`, eager mode).
@message_task(
    HEARTBEAT_TASK,
    queue=HEARTBEAT_QUEUE,
    bind=False,
    ignore_result=True,
    autoretry_for=(),
    Strategy="workers.heartbeat_intake:heartbeat_strategy",
)
def heartbeat_task(payload: Any) -> dict[str, Any]:
    heartbeat = parse_heartbeat(payload)
    if isinstance(heartbeat, dict):
        return heartbeat
    result = get_batcher(TRANSIENT_ERRORS).submit(heartbeat)
    report_refusal(heartbeat.workspace_id, result)
    return result


@message_task(
    HEARTBEAT_BATCH_TASK, queue=HEARTBEAT_QUEUE, bind=False, ignore_result=True, autoretry_for=()
)
def heartbeat_batch_task(payload: Any) -> dict[str, Any]:
    try:
        items = parse_heartbeat_batch(payload)
    except PayloadError as exc:  # a bad envelope is rejected whole
        metrics.count_refusal(HEARTBEAT_BATCH_TASK, "invalid_batch")
        log.warning("heartbeat batch rejected: %s", exc)
        return exc.as_result()
    valid = [item for item in items if isinstance(item, HeartbeatPayload)]
    ttl, first_seen = get_settings().liveness_ttl_seconds, time.time()
    deadlines = [count_until(hb, first_seen, ttl) for hb in valid]
    applied = iter(apply_until_committed(valid, deadlines, transient=TRANSIENT_ERRORS))
    counts: Counter[str] = Counter()
    applied_count = 0
    for item in items:
        if isinstance(item, PayloadError):
            metrics.count_refusal(HEARTBEAT_BATCH_TASK, item.label)
            log.warning("heartbeat rejected in a batch: %s", item)
            counts["rejected"] += 1
            continue
        result = next(applied)
        if result["status"] == "ok":  # the common case: nothing to report
            applied_count += 1
            continue
        report_refusal(item.workspace_id, result, HEARTBEAT_BATCH_TASK)
        counts[result["status"]] += 1
    counts["applied"] += applied_count
    return _summary(counts)


def _summary(counts: Counter[str]) -> dict[str, Any]:
    """CONTRACT §4.2a's result: how many heartbeats of the batch ended each way."""
    return {
        "status": "ok",
        **{key: counts[key] for key in ("applied", "ignored", "rejected", "unauthorized")},
    }
