"""registry.register and registry.update_card (CONTRACT §4.1, §4.3)."""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import REGISTER_TASK, UPDATE_CARD_TASK
from registry.ingestion.payloads import RegisterPayload, UpdateCardPayload
from registry.ingestion.registration import register, update_card
from tasks.base import RegistryTask, run_message
from workers.app import app


@app.task(name=REGISTER_TASK, base=RegistryTask, bind=True)
def register_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    task_id = self.request.id
    return run_message(RegisterPayload, payload, lambda uow, p: register(uow, p, task_id=task_id))


@app.task(name=UPDATE_CARD_TASK, base=RegistryTask)
def update_card_task(payload: Any) -> dict[str, Any]:
    return run_message(UpdateCardPayload, payload, update_card)
