"""The root command group and the shared way commands fail.

An unreachable service, a database without the registry's schema (or with an older
one) or a bad argument ends a command with one line naming what went wrong (and the
URL), never a traceback.
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
from sqlalchemy import Engine

from molecule_registry_client import safe_url
from registry.brokernodes import node_problem
from registry.config import get_settings
from registry.migrate import SchemaNotAtHead, check_schema
from registry.redaction import install_log_redaction
from registry.redisconn import RedisConfigError, check_config, describe

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
            hint = " (`molecule-registry migrate` creates it)" if "does not exist" in reason else ""
            raise click.ClickException(
                f"cannot reach PostgreSQL at {safe_url(settings.database_url)}: {reason}{hint}"
            ) from None
        except SchemaNotAtHead as exc:
            raise click.ClickException(f"{safe_url(settings.database_url)}: {exc}") from None
        except sqlalchemy.exc.ProgrammingError as exc:
            # A missing table or column: almost always a schema that was never migrated
            # or is behind this code. Say which, or re-raise a genuine bug.
            if getattr(exc.orig, "pgcode", None) not in _SCHEMA_ERRORS:
                raise
            raise click.ClickException(_schema_message(settings.database_url, exc)) from None
        except RedisConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise click.ClickException(
                f"cannot reach Redis at {describe(settings)}: {exc}"
            ) from None

    return wrapper  # type: ignore[return-value]


# PostgreSQL's undefined_table and undefined_column.
_SCHEMA_ERRORS = frozenset({"42P01", "42703"})


def _schema_message(database_url: str, exc: sqlalchemy.exc.ProgrammingError) -> str:
    from registry.db import get_engine

    first = str(exc.orig).strip().splitlines()[0] if exc.orig else "schema error"
    try:
        check_schema(get_engine(database_url))
    except SchemaNotAtHead as schema:
        return f"{safe_url(database_url)}: {schema} ({first})"
    except sqlalchemy.exc.SQLAlchemyError:
        pass
    return (
        f"{safe_url(database_url)}: {first}: is the schema current? run `molecule-registry migrate`"
    )


def reachable_stores() -> tuple[Engine, redis.Redis]:
    """The engine and the Redis client, both checked: a long-running command fails at
    once, in one line (under `friendly_errors`), when a store is unreachable or the
    schema is not the one this code expects."""
    from registry.db import get_engine, get_redis

    settings = get_settings()
    check_config(settings)  # a bad Sentinel setting: one line, no fallback
    problem = node_problem(settings.effective_broker_url)  # a typo in a broker node list
    if problem is not None:
        raise RedisConfigError(problem)
    engine, client = get_engine(), get_redis()
    client.ping()
    check_schema(engine)
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
