"""`molecule-registry can-communicate CALLER TARGET`: the §9 access check, for operators.

Exit status, so scripts can branch on it like `test`: 0 allowed, 1 denied,
2 a bad argument or an unreachable database (never confused with a denial).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import click

from cli.base import echo_json, friendly_errors, main, parse_uuid

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_ERROR = 2


@friendly_errors
def _check(caller: UUID, target: UUID) -> dict[str, Any]:
    from registry.access import can_communicate, denial_reason
    from registry.db import get_engine
    from registry.migrate import check_schema

    # The check itself fails secure (a failed lookup is a denial): an unmigrated
    # database must read as an error (exit 2), not as "denied".
    check_schema(get_engine())
    with get_engine().connect() as conn:
        answer: dict[str, Any] = {
            "caller_id": str(caller),
            "target_id": str(target),
            "allowed": can_communicate(conn, caller, target),
        }
        if not answer["allowed"]:
            conn.rollback()  # a failed check aborts the transaction; the reason needs a new one
            answer["reason"] = denial_reason(conn, caller, target)
    return answer


@main.command("can-communicate")
@click.argument("caller", callback=parse_uuid)
@click.argument("target", callback=parse_uuid)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def can_communicate_command(caller: UUID, target: UUID, as_json: bool) -> None:
    """May workspace CALLER talk to workspace TARGET? (exit 0 allowed, 1 denied, 2 error)"""
    try:
        answer = _check(caller, target)
    except click.ClickException as exc:
        exc.exit_code = EXIT_ERROR
        raise
    if as_json:
        echo_json(answer)
    elif answer["allowed"]:
        click.echo(f"allowed: {caller} may talk to {target}")
    else:
        click.echo(f"denied: {answer['reason']}")
    click.get_current_context().exit(EXIT_ALLOWED if answer["allowed"] else EXIT_DENIED)
