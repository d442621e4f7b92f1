"""registry.create_workspace and registry.remove_workspace (CONTRACT §4.4)."""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import (
    CREATE_WORKSPACE_TASK,
    DEFAULT_QUEUE,
    REMOVE_WORKSPACE_TASK,
)
from registry.ingestion.lifecycle import create_workspace, remove_workspace
from registry.ingestion.payloads import CreateWorkspacePayload, RemoveWorkspacePayload
from tasks.base import RegistryTask, delivery_of, message_task


@message_task(CREATE_WORKSPACE_TASK, queue=DEFAULT_QUEUE)
def create_workspace_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    # The task id makes a redelivered create find its own row (and, if it is a true
    # redelivery, its token: §4.1 step 7).
    task_id, delivery = self.request.id, delivery_of(self)
    return self.run_message(
        CreateWorkspacePayload,
        payload,
        lambda uow, p: create_workspace(uow, p, task_id=task_id, delivery=delivery),
    )


@message_task(REMOVE_WORKSPACE_TASK, queue=DEFAULT_QUEUE)
def remove_workspace_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    return self.run_message(RemoveWorkspacePayload, payload, remove_workspace)
