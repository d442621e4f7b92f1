"""Schema and workspace lifecycle commands: migrate, workspace create|remove|show."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import click
from sqlalchemy import text

from cli.base import echo_json, friendly_errors, main, parse_uuid
from cli.safe import terminal_safe
from registry.ingestion.payloads import (
    CreateWorkspacePayload,
    RemoveWorkspacePayload,
    parse_payload,
)
from registry.outcomes import MessageRefused


@main.command()
@friendly_errors
def migrate() -> None:
    """Create or upgrade the schema (harmless when it is current)."""
    import logging

    from registry import migrate as migrations

    # Alembic announces each revision as it starts: the progress of a long migration.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    migrations.upgrade()
    click.echo(f"schema at revision {migrations.current_revision()}")


@main.group()
def workspace() -> None:
    """Create, remove and inspect workspaces."""


def _apply(handler: Any, model: Any, payload: dict[str, Any]) -> dict[str, Any]:
    from registry.uow import unit_of_work

    try:
        message = parse_payload(model, payload)
        with unit_of_work() as uow:
            return handler(uow, message)
    except MessageRefused as refused:  # bad input (PayloadError) included
        raise click.ClickException(refused.error) from None


@workspace.command("create")
@click.argument("name")
@click.option("--runtime", default="langgraph", show_default=True)
@click.option("--id", "workspace_id", callback=parse_uuid, help="Choose the id (default: new).")
@click.option("--parent", "parent_id", callback=parse_uuid, help="Parent workspace id.")
@click.option("--tier", type=int, default=1, show_default=True)
@click.option("--hibernation-idle-minutes", type=int)
@click.option("--max-concurrent-tasks", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
def create(
    name: str,
    runtime: str,
    workspace_id: UUID | None,
    parent_id: UUID | None,
    tier: int,
    hibernation_idle_minutes: int | None,
    max_concurrent_tasks: int,
    as_json: bool,
) -> None:
    """Create a workspace (provisioning; awaiting_agent and a token for external)."""
    from registry.ingestion.lifecycle import create_workspace

    payload: dict[str, Any] = {
        "name": name,
        "runtime": runtime,
        "tier": tier,
        "max_concurrent_tasks": max_concurrent_tasks,
    }
    if workspace_id:
        payload["id"] = str(workspace_id)
    if parent_id:
        payload["parent_id"] = str(parent_id)
    if hibernation_idle_minutes is not None:
        payload["hibernation_idle_minutes"] = hibernation_idle_minutes
    result = _apply(create_workspace, CreateWorkspacePayload, payload)
    if as_json:
        echo_json(result)
        return
    click.echo(f"created {result['workspace_id']} ({result['workspace_status']})")
    if "auth_token" in result:
        click.echo(f"auth token (shown once): {result['auth_token']}")


@workspace.command("remove")
@click.argument("workspace_id", callback=parse_uuid)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def remove(workspace_id: UUID, as_json: bool) -> None:
    """Remove a workspace (soft delete: the row stays as a tombstone)."""
    from registry.ingestion.lifecycle import remove_workspace

    result = _apply(remove_workspace, RemoveWorkspacePayload, {"workspace_id": str(workspace_id)})
    if as_json:
        echo_json(result)
    else:
        click.echo(f"removed {workspace_id}")


SHOW_COLUMNS = (
    "id, name, tier, status, runtime, delivery_mode, url, parent_id, last_heartbeat_at, "
    "extract(epoch FROM now() - last_heartbeat_at)::int AS heartbeat_age_seconds, "
    "last_error_rate, last_sample_error, active_tasks, uptime_seconds, current_task, "
    "monthly_spend, max_concurrent_tasks, hibernation_idle_minutes, idle_since, "
    "registered_at, status_changed_at, created_at, updated_at, agent_card, runtime_metadata"
)


@workspace.command("show")
@click.argument("workspace_id", callback=parse_uuid)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def show(workspace_id: UUID, as_json: bool) -> None:
    """Show one workspace's row."""
    from registry.db import get_engine

    with get_engine().connect() as conn:
        row = (
            conn.execute(
                text(f"SELECT {SHOW_COLUMNS} FROM workspaces WHERE id = :id"), {"id": workspace_id}
            )
            .mappings()
            .first()
        )
    if row is None:
        raise click.ClickException(f"unknown workspace {workspace_id}")
    data = {k: (str(v) if v is not None and k.endswith("_id") else v) for k, v in row.items()}
    if as_json:
        echo_json(data)
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        # Name, URL, card and samples come from agents: shown escaped, never run.
        click.echo(f"{key.ljust(width)}  {'' if value is None else terminal_safe(value)}")
