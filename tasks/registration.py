"""registry.register and registry.update_card (CONTRACT §4.1, §4.3)."""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import DEFAULT_QUEUE, REGISTER_TASK, UPDATE_CARD_TASK
from registry.ingestion.payloads import RegisterPayload, UpdateCardPayload
from registry.ingestion.registration import register, update_card
from tasks.base import RegistryTask, delivery_of, message_task


@message_task(REGISTER_TASK, queue=DEFAULT_QUEUE)
def register_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    # A true redelivery answers with the same token (§4.1 step 7): task id and delivery.
    task_id, delivery = self.request.id, delivery_of(self)
    return self.run_message(
        RegisterPayload,
        payload,
        lambda uow, p: register(uow, p, task_id=task_id, delivery=delivery),
    )


@message_task(UPDATE_CARD_TASK, queue=DEFAULT_QUEUE)
def update_card_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    return self.run_message(UpdateCardPayload, payload, update_card)
