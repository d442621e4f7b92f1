"""`molecule-registry demo`: the whole system with a simulated fleet (demo/molecule_registry_demo/runner.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.base import main


def _parse_mix(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from molecule_registry_demo.simulator import DEFAULT_MIX, parse_mix

    if value is None:
        return dict(DEFAULT_MIX)
    try:
        return parse_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


@main.command()
@click.option(
    "--fleet",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Number of simulated agents.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Seconds to run; 0 runs until Ctrl-C.",
)
@click.option(
    "--mix",
    callback=_parse_mix,
    metavar="NAME=WEIGHT,...",
    help="Behaviour weights: healthy, dying, flaky, idle, laptop, stuck, late, "
    "misconfigured, paused (default healthy=55,dying=8,flaky=8,idle=8,laptop=8,stuck=4,"
    "late=3,misconfigured=3,paused=3; behaviours not named get none).",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between an agent's heartbeats.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker pool processes.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Where the worker's and the listener's logs go.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=0,
    help="Port of the worker's metrics endpoint (default: any free port).",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the closing summary as JSON to this file.",
)
@click.option("--seed", type=int, help="Seed of the behaviours' randomness (repeatable runs).")
@click.option(
    "--via",
    type=click.Choice(["broker", "http"]),
    default="broker",
    show_default=True,
    help="How the agents register and heartbeat: Celery messages on the broker, or the "
    "original platform's HTTP calls through a gateway the demo starts.",
)
@click.option(
    "--allow-any-database",
    is_flag=True,
    help="Run even if DATABASE_URL is not a demo database (name ending in _demo, or one "
    "the demo created). The demo fails real provisioning workspaces within seconds.",
)
def demo(
    fleet: int,
    duration: float,
    mix: Any,
    heartbeat_interval: float,
    concurrency: int,
    log_dir: Path,
    metrics_port: int,
    summary_json: Path | None,
    seed: int | None,
    via: str,
    allow_any_database: bool,
) -> None:
    """Run worker, beat and liveness listener with a simulated fleet, and watch it.

    Needs PostgreSQL and Redis reachable at DATABASE_URL and REDIS_URL (scripts/demo
    starts them); migrates the database; stops every process it started on exit.
    Timings are shortened so every status shows within about a minute; idle agents
    hibernate after about 66 s (the hibernation unit is the minute).
    """
    from molecule_registry_demo.runner import DemoError, DemoOptions, run_demo

    options = DemoOptions(
        fleet=fleet,
        duration=duration,
        mix=mix,
        heartbeat_interval=heartbeat_interval,
        log_dir=log_dir,
        metrics_port=metrics_port,
        concurrency=concurrency,
        summary_json=summary_json,
        seed=seed,
        allow_any_database=allow_any_database,
        via=via,
    )
    try:
        code = run_demo(options, out=click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    if code:
        raise SystemExit(code)
