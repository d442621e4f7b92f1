"""The heartbeat's way in, shared by every path that takes one (CONTRACT §4.2).

A per-message heartbeat (the worker's strategy, workers/heartbeat_intake.py), a
direct call of the task, and each item of a heartbeat batch (tasks/heartbeats.py) are
parsed and, when refused, reported here: counted by reason and logged without the
payload, which carries the workspace's token. Applying them is the batcher's
(registry/ingestion/batcher.py).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from molecule_registry_client.names import HEARTBEAT_TASK
from registry import metrics
from registry.ingestion.payloads import HeartbeatPayload, PayloadError, parse_payload
from registry.outcomes import refusal_label

log = logging.getLogger(__name__)

# What a log line may quote of an agent-supplied id: a plain token (a UUID), never
# arbitrary text (newlines would forge log lines).
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def printable_id(value: Any) -> str:
    """`value` as a log line may quote it: a plain token, else `?`."""
    if isinstance(value, str) and _PLAIN_ID.fullmatch(value):
        return value
    return "?"


def parse_heartbeat(payload: Any) -> HeartbeatPayload | dict[str, Any]:
    """The validated heartbeat, or the refusal to answer (counted and logged here)."""
    try:
        return parse_payload(HeartbeatPayload, payload)
    except PayloadError as exc:
        metrics.count_refusal(HEARTBEAT_TASK, exc.label)
        # Never log the payload itself: it carries the workspace's token.
        workspace = payload.get("workspace_id") if isinstance(payload, dict) else None
        log.warning("heartbeat rejected (workspace_id=%s): %s", printable_id(workspace), exc)
        return exc.as_result()


def report_refusal(workspace: Any, result: dict[str, Any], task: str = HEARTBEAT_TASK) -> None:
    """Count and log a refused heartbeat (never its payload: it carries the token)."""
    reason = refusal_label(result)
    if reason is None:
        return
    metrics.count_refusal(task, reason)
    if result["status"] in ("rejected", "unauthorized"):
        log.warning(
            "heartbeat %s (workspace_id=%s): %s", result["status"], workspace, result.get("error")
        )
