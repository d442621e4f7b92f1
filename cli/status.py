"""`molecule-registry status`: the fleet at a glance."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import bindparam, text

from cli.base import echo_json, friendly_errors, main
from cli.safe import terminal_safe
from registry.statuses import ALL_STATUSES

# Trouble first: what an operator looks at.
DISPLAY_ORDER = (
    "failed",
    "offline",
    "degraded",
    "awaiting_agent",
    "provisioning",
    "hibernating",
    "paused",
    "hibernated",
    "online",
    "removed",
)


def _where(statuses: tuple[str, ...], runtimes: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    # Tombstones are hidden unless asked for by name: they only ever accumulate.
    clauses = ["status = ANY(:statuses)" if statuses else "status <> 'removed'"]
    params: dict[str, Any] = {}
    if statuses:
        params["statuses"] = list(statuses)
    if runtimes:
        clauses.append("runtime = ANY(:runtimes)")
        params["runtimes"] = list(runtimes)
    return " AND ".join(clauses), params


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@main.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(ALL_STATUSES),
    help="Only this status (repeatable). Removed workspaces show only when asked for.",
)
@click.option("--runtime", "runtimes", multiple=True, help="Only this runtime (repeatable).")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Rows in the table (0: all); the counts always cover every match.",
)
@click.option("--json", "as_json", is_flag=True, help="Print counts and rows as JSON.")
@friendly_errors
def status(statuses: tuple[str, ...], runtimes: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Workspaces with status, runtime, last heartbeat age and active tasks; counts per status."""
    from registry.db import get_engine

    where, params = _where(statuses, runtimes)
    order = ", ".join(f"'{s}'" for s in DISPLAY_ORDER)
    rows_sql = text(
        f"""
        SELECT id, name, status, runtime, active_tasks, last_heartbeat_at,
               extract(epoch FROM now() - last_heartbeat_at)::bigint AS heartbeat_age_seconds
        FROM workspaces
        WHERE {where}
        ORDER BY array_position(ARRAY[{order}]::text[], status), name, id
        LIMIT :limit
        """
    ).bindparams(bindparam("limit", value=limit or None))
    counts_sql = text(f"SELECT status, count(*) AS n FROM workspaces WHERE {where} GROUP BY status")
    with get_engine().connect() as conn:
        rows = conn.execute(rows_sql, params).mappings().all()
        counts = {row.status: row.n for row in conn.execute(counts_sql, params)}
    ordered_counts = {s: counts[s] for s in DISPLAY_ORDER if s in counts}
    total = sum(counts.values())

    if as_json:
        echo_json(
            {
                "counts": ordered_counts,
                "total": total,
                "shown": len(rows),
                "workspaces": [
                    {
                        "id": str(row["id"]),
                        "name": row["name"],
                        "status": row["status"],
                        "runtime": row["runtime"],
                        "active_tasks": row["active_tasks"],
                        "last_heartbeat_at": row["last_heartbeat_at"].isoformat()
                        if row["last_heartbeat_at"]
                        else None,
                        "heartbeat_age_seconds": row["heartbeat_age_seconds"],
                    }
                    for row in rows
                ],
            }
        )
        return

    click.echo(
        "  ".join(f"{s}={n}" for s, n in ordered_counts.items()) + f"  (total {total})"
        if total
        else "no workspaces match"
    )
    if not rows:
        return
    # Names come from agents: escape sequences in them are shown, never run.
    names = [terminal_safe(row["name"]) for row in rows]
    name_width = min(max(len(name) for name in names), 40)
    click.echo("")
    click.echo(
        f"{'ID':<36}  {'NAME':<{name_width}}  {'STATUS':<14}  {'RUNTIME':<12}  "
        f"{'HB AGE':>9}  {'TASKS':>5}"
    )
    for row, full_name in zip(rows, names, strict=True):
        name = full_name if len(full_name) <= name_width else full_name[: name_width - 1] + "…"
        click.echo(
            f"{row['id']!s:<36}  {name:<{name_width}}  {row['status']:<14}  "
            f"{terminal_safe(row['runtime']):<12}  {_age(row['heartbeat_age_seconds']):>9}  "
            f"{row['active_tasks'] if row['active_tasks'] is not None else '-':>5}"
        )
    if len(rows) < total:
        click.echo(f"… {total - len(rows)} more (use --limit 0 for all, or filter)")
