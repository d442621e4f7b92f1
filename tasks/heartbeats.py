"""registry.heartbeat and registry.heartbeat_batch (CONTRACT §4.2, §4.2a): fire-and-forget.

A per-message heartbeat goes through this process's batcher (group commit:
workers/heartbeat_batcher.py) and returns once its batch committed, so the message is
acknowledged only after its effect is durable. A heartbeat_batch message is one
transaction of its own.

Retries of a heartbeat stop once it could no longer count (CONTRACT §4.2, freshness):
a retry carries an `expires` of the heartbeat's newest `sent_at` (else its first
failure) plus LIVENESS_TTL_SECONDS, and the worker discards it after that. While the
database is down its clock cannot be read, so this bound uses the worker's; the apply
itself judges staleness on the database clock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery.utils.time import get_exponential_backoff_interval

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, HEARTBEAT_TASK
from registry import metrics
from registry.config import get_settings
from registry.ingestion.heartbeats import STALE_REASON, apply_heartbeats, refusal_reason
from registry.ingestion.payloads import (
    HeartbeatPayload,
    PayloadError,
    parse_heartbeat_batch,
    parse_payload,
)
from registry.uow import unit_of_work
from tasks.base import TRANSIENT_ERRORS, RegistryTask
from workers.app import app
from workers.heartbeat_batcher import get_batcher

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


def _retry_deadline(task: RegistryTask, sent_at: Sequence[datetime | None]) -> float:
    """Epoch seconds after which retrying cannot make the heartbeat(s) count any more."""
    ttl = get_settings().liveness_ttl_seconds
    if sent_at and all(s is not None for s in sent_at):
        deadline = max(s.timestamp() for s in sent_at if s is not None) + ttl
    else:
        deadline = time.time() + ttl  # the first failure starts the clock...
    expires = task.request.expires  # ...which a retried message carries along
    if expires:
        stamp = datetime.fromisoformat(expires) if isinstance(expires, str) else expires
        deadline = min(deadline, stamp.timestamp())
    return deadline


def _retry_within_ttl(
    task: RegistryTask, exc: BaseException, sent_at: Sequence[datetime | None]
) -> dict[str, Any]:
    """Retry with backoff while the heartbeat can still count; else give it up."""
    deadline = _retry_deadline(task, sent_at)
    remaining = deadline - time.time()
    if remaining <= 1:
        metrics.HEARTBEATS_REJECTED.labels("stale").inc(len(sent_at))
        log.warning("heartbeat given up after %d retries: %s", task.request.retries, exc)
        return {"status": "ignored", "reason": STALE_REASON}
    countdown = get_exponential_backoff_interval(
        factor=task.retry_backoff,
        retries=task.request.retries,
        maximum=task.retry_backoff_max,
        full_jitter=True,
    )
    raise task.retry(
        exc=exc,
        countdown=min(countdown, remaining),
        expires=datetime.fromtimestamp(deadline, UTC),
        max_retries=None,  # bounded by `expires` instead
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
    try:
        result = get_batcher(TRANSIENT_ERRORS).submit(heartbeat)
    except TRANSIENT_ERRORS as exc:
        return _retry_within_ttl(self, exc, [heartbeat.sent_at])
    _report_refusal(heartbeat.workspace_id, result)
    return result


@app.task(
    name=HEARTBEAT_BATCH_TASK,
    base=RegistryTask,
    bind=True,
    ignore_result=True,
    autoretry_for=(),
)
def heartbeat_batch_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    try:
        items = parse_heartbeat_batch(payload)
    except PayloadError as exc:  # a bad envelope is rejected whole
        metrics.HEARTBEATS_REJECTED.labels("invalid_batch").inc()
        log.warning("heartbeat batch rejected: %s", exc)
        return exc.as_result()
    valid = [item for item in items if isinstance(item, HeartbeatPayload)]
    try:
        with unit_of_work() as uow:
            applied = iter(apply_heartbeats(uow, valid))
    except TRANSIENT_ERRORS as exc:
        _retry_within_ttl(self, exc, [hb.sent_at for hb in valid])  # raises Retry, or:
        return _summary(Counter(ignored=len(valid), rejected=len(items) - len(valid)))
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
