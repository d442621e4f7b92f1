"""The one way every part of the registry gets a Redis client (CONTRACT §1).

Without Sentinel settings a client talks to REDIS_URL's node. With REDIS_SENTINELS and
REDIS_SENTINEL_MASTER it follows whichever node the Sentinels name as primary: each new
connection asks them, and a connection to a node that died or was demoted fails and is
replaced by one to the new primary (redis-py's SentinelConnectionPool). REDIS_URL's
database number, user and password still apply to the primary.

A bad Sentinel configuration (one setting without the other, no Sentinel answering, a
master name they do not know) is a one-line `RedisConfigError` at start, never a silent
fallback to REDIS_URL's node: `config_problem` says what is wrong and each process
(worker, beat, listener, gateway, CLI, doctor) refuses to start with it.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.exceptions
import redis.sentinel
from redis.connection import parse_url

from registry.config import Settings

# Sentinels answer from memory: a slow one is as good as gone.
SENTINEL_TIMEOUT_SECONDS = 2.0


class RedisConfigError(RuntimeError):
    """The Redis (Sentinel) settings cannot work; the message is one line saying why."""


def _url_parts(settings: Settings) -> dict[str, Any]:
    """REDIS_URL's database, user and password (its host and port are Sentinel's job)."""
    parts = parse_url(settings.redis_url)
    return {k: parts[k] for k in ("db", "username", "password") if parts.get(k) is not None}


def sentinels_text(settings: Settings) -> str:
    return ", ".join(f"{host}:{port}" for host, port in settings.redis_sentinels)


def describe(settings: Settings) -> str:
    """Where Redis is, for log lines and errors (never a password)."""
    if not settings.sentinel:
        from molecule_registry_client import safe_url

        return safe_url(settings.redis_url)
    db = _url_parts(settings).get("db", 0)
    return (
        f"the primary of {settings.redis_sentinel_master!r} (db {db}) "
        f"named by the Sentinels at {sentinels_text(settings)}"
    )


def _both_or_neither(settings: Settings) -> None:
    if settings.redis_sentinels and not settings.redis_sentinel_master:
        raise RedisConfigError("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not: set both")
    if settings.redis_sentinel_master and not settings.redis_sentinels:
        raise RedisConfigError(
            "REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not (or is not valid "
            "comma-separated host:port): set both"
        )


def sentinel(settings: Settings) -> redis.sentinel.Sentinel:
    _both_or_neither(settings)
    return redis.sentinel.Sentinel(
        list(settings.redis_sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
            "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        },
    )


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of REDIS_URL's node, or of the Sentinels' current primary.

    `options` are redis-py connection options (decode_responses, socket_timeout, ...).
    """
    if not settings.sentinel:
        return redis.Redis.from_url(settings.redis_url, **options)
    # check_connection: a new connection PINGs first, so one to a node that just
    # stopped being primary fails at once rather than on its first command.
    return sentinel(settings).master_for(
        settings.redis_sentinel_master,
        check_connection=True,
        **{**_url_parts(settings), **options},
    )


def primary_address(settings: Settings) -> tuple[str, int]:
    """The node the Sentinels name as primary now (REDIS_URL's without Sentinel)."""
    if not settings.sentinel:
        parts = parse_url(settings.redis_url)
        return str(parts.get("host", "localhost")), int(parts.get("port", 6379))
    try:
        host, port = sentinel(settings).discover_master(settings.redis_sentinel_master)
    except redis.sentinel.MasterNotFoundError as exc:
        raise redis.exceptions.ConnectionError(
            f"no primary for {settings.redis_sentinel_master!r}: {exc}"
        ) from None
    return str(host), int(port)


def config_problem(settings: Settings) -> str | None:
    """Why these Sentinel settings cannot work (one line), or None (also without Sentinel).

    Asks every Sentinel: none answering, or none knowing the master name, is fatal.
    """
    if not settings.sentinel:
        return None
    try:
        _both_or_neither(settings)
    except RedisConfigError as exc:
        return str(exc)
    answered: list[str] = []
    known: set[str] = set()
    for host, port in settings.redis_sentinels:
        client = redis.Redis(
            host=host,
            port=port,
            socket_timeout=SENTINEL_TIMEOUT_SECONDS,
            socket_connect_timeout=SENTINEL_TIMEOUT_SECONDS,
        )
        try:
            masters = client.sentinel_masters()
        except (redis.exceptions.RedisError, OSError):
            continue
        finally:
            client.close()
        answered.append(f"{host}:{port}")
        known.update(str(name) for name in masters)
        if settings.redis_sentinel_master in masters:
            return None
    if not answered:
        return f"no Redis Sentinel answers at {sentinels_text(settings)} (REDIS_SENTINELS)"
    names = ", ".join(sorted(known)) or "none"
    return (
        f"the Redis Sentinels at {', '.join(answered)} know no master named "
        f"{settings.redis_sentinel_master!r} (REDIS_SENTINEL_MASTER; they know: {names})"
    )


def check_config(settings: Settings) -> None:
    """Raise RedisConfigError when `config_problem` finds one."""
    problem = config_problem(settings)
    if problem is not None:
        raise RedisConfigError(problem)


# -- Celery's own Sentinel transport (broker and result backend) --------------------


def is_sentinel_url(url: str) -> bool:
    return url.startswith("sentinel://")


def sentinel_transport_options(settings: Settings) -> dict[str, Any]:
    """The transport options a `sentinel://` broker or result backend needs."""
    if not settings.redis_sentinel_master:
        return {}
    return {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": {
            "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
            "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        },
    }


# -- what a failover may not lose -------------------------------------------------------

# Redis replicates asynchronously: a write the primary acknowledged can be missing on
# the replica Sentinel promotes. Recorded events are deleted from the outbox only once
# a replica has their publication too (WAIT), so the relay republishes any a failover
# lost. A primary without a replica has nothing that could be promoted: nothing to wait for.
REPLICA_WAIT_MS = 200


def queue_replica_wait(pipe: Any, settings: Settings) -> bool:
    """Add `WAIT 1` to a pipeline behind Sentinel; whether it was added (its answer is
    then the pipeline's last result)."""
    if not settings.sentinel:
        return False
    pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)
    return True


def replicated(client: redis.Redis, results: list[Any], waited: bool) -> bool:
    """After a pipeline with `queue_replica_wait`: may its writes be taken as durable?"""
    if not waited or int(results[-1]) >= 1:
        return True
    # No replica confirmed: fine only when there is none to promote.
    return int(client.info("replication").get("connected_slaves", 0)) == 0
