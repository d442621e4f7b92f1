"""registry.heartbeat and registry.heartbeat_batch (CONTRACT §4.2, §4.2a): fire-and-forget.

A per-message heartbeat goes through this process's batcher (group commit:
workers/heartbeat_batcher.py) and returns once its batch committed, so the message is
acknowledged only after its effect is durable. A heartbeat_batch message is one
transaction of its own.

A transaction failing on a dependency (database or Redis down) is tried again with
backoff inside the task, the message unacknowledged, for as long as its heartbeats can
still count (CONTRACT §4.2, freshness; workers/heartbeat_batcher.py): then they are
given up as stale. Nothing is acknowledged before its commit or that verdict.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_TASK
from registry import metrics
from registry.config import get_settings
from registry.ingestion.heartbeats import refusal_reason
from registry.ingestion.payloads import (
    HeartbeatPayload,
    PayloadError,
    parse_heartbeat_batch,
    parse_payload,
)
from tasks.base import TRANSIENT_ERRORS, RegistryTask
from workers.app import app
from workers.heartbeat_batcher import apply_until_committed, count_until, get_batcher

log = logging.getLogger(__name__)


def _report_refusal(workspace: Any, result: dict[str, Any]) -> None:
    """Count and log a refused heartbeat (never its payload: it carries the token)."""
    reason = refusal_reason(result)
    if reason is None:
        return
    metrics.HEARTBEATS_REJECTED.labels(reason).inc()
    if result["status"] in ("rejected", "unauthorized"):
        log.warning(
            "heartbeat %s (workspace_id=%s): %s", result["status"], workspace, result.get("error")
        )


@app.task(name=HEARTBEAT_TASK, base=RegistryTask, bind=True, ignore_result=True, autoretry_for=())
def heartbeat_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    try:
        heartbeat = parse_payload(HeartbeatPayload, payload)
    except PayloadError as exc:
        metrics.HEARTBEATS_REJECTED.labels("invalid").inc()
        # Never log the payload itself: it carries the workspace's token.
        workspace = payload.get("workspace_id") if isinstance(payload, dict) else None
        log.warning("heartbeat rejected (workspace_id=%r): %s", workspace, exc)
        return exc.as_result()
    result = get_batcher(TRANSIENT_ERRORS).submit(heartbeat)
    _report_refusal(heartbeat.workspace_id, result)
    return result


@app.task(name=HEARTBEAT_BATCH_TASK, base=RegistryTask, ignore_result=True, autoretry_for=())
def heartbeat_batch_task(payload: Any) -> dict[str, Any]:
    try:
        items = parse_heartbeat_batch(payload)
    except PayloadError as exc:  # a bad envelope is rejected whole
        metrics.HEARTBEATS_REJECTED.labels("invalid_batch").inc()
        log.warning("heartbeat batch rejected: %s", exc)
        return exc.as_result()
    valid = [item for item in items if isinstance(item, HeartbeatPayload)]
    ttl, first_seen = get_settings().liveness_ttl_seconds, time.time()
    deadlines = [count_until(hb, first_seen, ttl) for hb in valid]
    applied = iter(apply_until_committed(valid, deadlines, transient=TRANSIENT_ERRORS))
    counts: Counter[str] = Counter()
    for item in items:
        if isinstance(item, PayloadError):
            metrics.HEARTBEATS_REJECTED.labels("invalid").inc()
            log.warning("heartbeat rejected in a batch: %s", item)
            counts["rejected"] += 1
            continue
        result = next(applied)
        _report_refusal(item.workspace_id, result)
        counts["applied" if result["status"] == "ok" else result["status"]] += 1
    return _summary(counts)


def _summary(counts: Counter[str]) -> dict[str, Any]:
    """CONTRACT §4.2a's result: how many heartbeats of the batch ended each way."""
    return {
        "status": "ok",
        **{key: counts[key] for key in ("applied", "ignored", "rejected", "unauthorized")},
    }
