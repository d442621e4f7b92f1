"""The root command group and the shared way commands fail.

An unreachable service or a bad argument ends a command with one line naming what
went wrong (and the URL), never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

import click
import redis
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy import Engine, text

from molecule_registry_client import safe_url
from registry.config import get_settings
from registry.redaction import install_log_redaction

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """molecule-registry: the workspace registry of the agent platform."""
    install_log_redaction()  # CONTRACT §4.1 step 8: no token in any log line
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def friendly_errors(func: F) -> F:
    """Turn an unreachable service into a one-line error naming it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = get_settings()
        try:
            return func(*args, **kwargs)
        except sqlalchemy.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "unreachable"
            raise click.ClickException(
                f"cannot reach PostgreSQL at {safe_url(settings.database_url)}: {reason}"
            ) from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise click.ClickException(
                f"cannot reach Redis at {safe_url(settings.redis_url)}: {exc}"
            ) from None

    return wrapper  # type: ignore[return-value]


def reachable_stores() -> tuple[Engine, redis.Redis]:
    """The engine and the Redis client, both checked: a long-running command fails at
    once, in one line (under `friendly_errors`), when a store is unreachable."""
    from registry.db import get_engine, get_redis

    engine, client = get_engine(), get_redis()
    client.ping()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return engine, client


def parse_uuid(_ctx: click.Context | None, param: click.Parameter | None, value: Any) -> Any:
    """click callback: a clear error for something that is not a workspace id."""
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        name = param.name if param is not None else "id"
        raise click.BadParameter(f"{value!r} is not a UUID", param_hint=name) from None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, sort_keys=True))
