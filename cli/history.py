"""`molecule-registry history ID [--since 7d] [--json]`: one workspace's availability."""

from __future__ import annotations

from uuid import UUID

import click

from cli.base import echo_json, friendly_errors, main
from cli.insight_args import human_seconds, parse_window, percent
from cli.safe import terminal_safe
from registry.insight.history import UnknownWorkspace, workspace_history

TIMELINE_LINES = 50  # the text output's newest segments; --json has them all


@main.command()
@click.argument("workspace_id")
@click.option(
    "--since",
    "since_text",
    default="7d",
    show_default=True,
    help="window: a duration ago (24h, 7d) or an RFC 3339 time",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@friendly_errors
def history(workspace_id: str, since_text: str, as_json: bool) -> None:
    """Status timeline, availability, outages and mean time to recovery of a workspace."""
    since = parse_window(since_text)
    try:
        ws = str(UUID(workspace_id.strip()))
    except ValueError:
        raise click.ClickException(
            f"{terminal_safe(workspace_id)!r} is not a workspace id"
        ) from None
    from registry.db import get_engine

    with get_engine().connect() as conn:
        try:
            found = workspace_history(conn, ws, since)
        except UnknownWorkspace:
            raise click.ClickException(f"no workspace {ws}") from None
    if as_json:
        echo_json(found.as_dict())
        return
    outages = found.outages()
    longest = max((secs for _, _, secs in outages), default=None)
    click.echo(f"workspace {found.workspace_id} ({terminal_safe(found.name)}), now {found.status}")
    click.echo(f"window    {found.since:%Y-%m-%d %H:%M:%S} → {found.until:%Y-%m-%d %H:%M:%S} UTC")
    click.echo(
        f"available {percent(found.availability)}   outages {len(outages)}"
        f" (longest {human_seconds(longest)})   MTTR {human_seconds(found.mttr_seconds)}"
    )
    segments = found.segments[-TIMELINE_LINES:]
    if len(found.segments) > len(segments):
        click.echo(f"timeline (newest {len(segments)} of {len(found.segments)}):")
    else:
        click.echo("timeline:")
    for seg in segments:
        click.echo(
            f"  {seg.start:%Y-%m-%d %H:%M:%S}  {seg.status or 'unknown':<15} {human_seconds(seg.seconds)}"
        )
