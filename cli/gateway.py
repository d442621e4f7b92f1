"""`molecule-registry gateway`: the original platform's HTTP calls in front of the queue."""

from __future__ import annotations

import click

from cli.base import friendly_errors, main, reachable_stores
from registry.config import get_settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@main.command("gateway")
@click.option("--host", default=None, help="Address to listen on [default: GATEWAY_HOST].")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on [default: GATEWAY_PORT].",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@friendly_errors
def gateway(host: str | None, port: int | None, log_level: str) -> None:
    """Serve the original platform's registry HTTP calls (register, heartbeat, …).

    Each call becomes a queue message for the workers; the gateway writes nothing to
    PostgreSQL itself. Run as many side by side as you like behind a load balancer.
    """
    from gateway.serve import serve

    settings = get_settings()
    reachable_stores()  # one clear line now, not a 503 on every call later
    serve(
        settings,
        host or settings.gateway_host,
        settings.gateway_port if port is None else port,
        log_level,
    )
