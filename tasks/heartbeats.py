"""registry.heartbeat (CONTRACT §4.2): fire-and-forget, so no result is stored."""

from __future__ import annotations

import logging
from typing import Any

from molecule_registry_client.names import HEARTBEAT_QUEUE, HEARTBEAT_TASK
from registry import metrics
from registry.ingestion.heartbeats import apply_heartbeats
from registry.ingestion.payloads import HeartbeatPayload, PayloadError, parse_payload
from registry.uow import unit_of_work
from tasks.base import message_task

log = logging.getLogger(__name__)


@message_task(HEARTBEAT_TASK, queue=HEARTBEAT_QUEUE, bind=False, ignore_result=True)
def heartbeat_task(payload: Any) -> dict[str, Any]:
    try:
        heartbeat = parse_payload(HeartbeatPayload, payload)
    except PayloadError as exc:
        metrics.HEARTBEATS_REJECTED.labels("invalid").inc()
        # Never log the payload itself: it carries the workspace's token.
        workspace = payload.get("workspace_id") if isinstance(payload, dict) else None
        log.warning("heartbeat rejected (workspace_id=%r): %s", workspace, exc)
        return exc.as_result()
    with unit_of_work() as uow:
        (result,) = apply_heartbeats(uow, [heartbeat])
    if result["status"] in ("rejected", "unauthorized"):
        metrics.HEARTBEATS_REJECTED.labels(result["status"]).inc()
        log.warning(
            "heartbeat %s (workspace_id=%s): %s",
            result["status"],
            heartbeat.workspace_id,
            result.get("error"),
        )
    return result
