"""registry.can_communicate (CONTRACT §9): `{caller_id, target_id}` → `{"status": "ok", "allowed"}`.

A denial also carries `reason` (an unknown or removed endpoint is named by its field).
Bad ids are `rejected`, naming the field. A failing lookup answers `allowed: false`
(fail secure); only a database that cannot be reached at all is retried.
"""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import CAN_COMMUNICATE_TASK, DEFAULT_QUEUE
from registry.access import can_communicate, denial_reason
from registry.ingestion.payloads import CanCommunicatePayload
from registry.uow import UnitOfWork
from tasks.base import RegistryTask, message_task


def _decide(uow: UnitOfWork, message: CanCommunicatePayload) -> dict[str, Any]:
    if can_communicate(uow.conn, message.caller_id, message.target_id):
        return {"status": "ok", "allowed": True}
    return {
        "status": "ok",
        "allowed": False,
        "reason": denial_reason(uow.conn, message.caller_id, message.target_id),
    }


@message_task(CAN_COMMUNICATE_TASK, queue=DEFAULT_QUEUE)
def can_communicate_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    return self.run_message(CanCommunicatePayload, payload, _decide)
