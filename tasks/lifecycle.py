"""registry.create_workspace and registry.remove_workspace (CONTRACT §4.4)."""

from __future__ import annotations

from typing import Any

from molecule_registry_client.names import CREATE_WORKSPACE_TASK, REMOVE_WORKSPACE_TASK
from registry.ingestion.lifecycle import create_workspace, remove_workspace
from registry.ingestion.payloads import CreateWorkspacePayload, RemoveWorkspacePayload
from tasks.base import RegistryTask, run_message
from workers.app import app


@app.task(name=CREATE_WORKSPACE_TASK, base=RegistryTask, bind=True)
def create_workspace_task(self: RegistryTask, payload: Any) -> dict[str, Any]:
    task_id = self.request.id
    return run_message(
        CreateWorkspacePayload, payload, lambda uow, p: create_workspace(uow, p, task_id=task_id)
    )


@app.task(name=REMOVE_WORKSPACE_TASK, base=RegistryTask)
def remove_workspace_task(payload: Any) -> dict[str, Any]:
    return run_message(RemoveWorkspacePayload, payload, remove_workspace)
