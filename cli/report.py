"""`molecule-registry report [--since 24h] [--json]`: the fleet's reliability at a glance."""

from __future__ import annotations

from typing import Any

import click

from cli.base import echo_json, friendly_errors, main
from cli.insight_args import parse_window, percent
from cli.safe import terminal_safe
from registry.insight.report import fleet_report


@main.command()
@click.option(
    "--since",
    "since_text",
    default="24h",
    show_default=True,
    help="window: a duration ago (24h, 7d) or an RFC 3339 time",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@friendly_errors
def report(since_text: str, as_json: bool) -> None:
    """Incidents, self-preservation, least available and flapping workspaces, and the
    fleet's availability distribution."""
    since = parse_window(since_text)
    from registry.db import get_engine

    with get_engine().connect() as conn:
        found = fleet_report(conn, since)
    if as_json:
        echo_json(found)
        return
    _print(found)


def _print(found: dict[str, Any]) -> None:
    click.echo(f"since {found['since']}")
    click.echo(f"incidents ({len(found['incidents'])}):")
    for i in found["incidents"]:
        ended = f"resolved {i['resolved_at']}" if i["resolved_at"] else "OPEN"
        click.echo(
            f"  #{i['incident_id']} {i['kind']} {ended}: {i['members']} now, peak "
            f"{i['peak_members']}, opened {i['opened_at']}: {terminal_safe(i['signature'])}"
        )
    click.echo(f"self-preservation episodes ({len(found['self_preservation'])}):")
    for e in found["self_preservation"]:
        click.echo(f"  {e['start'] or '(before)'} → {e['end'] or 'ongoing'}: {e['reason']}")
    click.echo(f"least available ({len(found['least_available'])}):")
    for w in found["least_available"]:
        click.echo(
            f"  {w['workspace_id']}  {percent(w['availability_percent']):>9}  {w['status']:<15}"
            f" {terminal_safe(w['name'] or '')}"
        )
    click.echo(f"flapping ({len(found['flapping'])}):")
    for w in found["flapping"]:
        click.echo(
            f"  {w['workspace_id']}  {w['changes']} changes  {w['status']:<15}"
            f" {terminal_safe(w['name'] or '')}"
        )
    fleet = found["availability"]
    click.echo(
        f"availability of {fleet['workspaces']} workspaces, mean {percent(fleet['mean_percent'])}:"
    )
    for label, count in fleet["distribution"].items():
        click.echo(f"  {label:>10}  {count}")
