"""Liveness commands: `liveness` (the listener, as `python -m workers.liveness`) and
`self-preservation` (is automatic unreachable-marking paused, and why)."""

from __future__ import annotations

from cli.base import echo_json, friendly_errors, main


@main.command()
def liveness() -> None:
    """Run the liveness listener: expired ws:<id> keys → offline / awaiting_agent."""
    from workers.liveness import run_listener

    raise SystemExit(run_listener())


@main.command("self-preservation")
@friendly_errors
def self_preservation() -> None:
    """Show whether self-preservation pauses unreachable-marking, why, and since when."""
    from registry.db import get_engine
    from registry.liveness.selfpreservation import current_state

    with get_engine().connect() as conn:
        echo_json(current_state(conn))
