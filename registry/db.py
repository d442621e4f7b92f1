"""Engine and Redis client, one of each per process and URL."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, event, exc

from registry.config import get_settings
from registry.redisconn import redis_client

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_redis_clients: dict[str, redis.Redis] = {}


def session_options(statement_timeout_ms: int, lock_timeout_ms: int) -> str:
    """libpq `options` bounding every statement and lock wait of a connection (0 = off).

    A statement past its timeout fails with QueryCanceled (an OperationalError: the
    message is retried); so does a row-lock wait past lock_timeout. Either way no task
    runs long enough to reach the broker's visibility timeout on the database alone.
    """
    return (
        f"-c statement_timeout={int(statement_timeout_ms)} -c lock_timeout={int(lock_timeout_ms)}"
    )


def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    url = url or settings.database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=5,
                max_overflow=5,
                # executemany of UPDATEs (heartbeat batches) goes out as one round trip.
                executemany_mode="values_plus_batch",
                connect_args={
                    "connect_timeout": 5,
                    "options": session_options(
                        settings.db_statement_timeout_ms, settings.db_lock_timeout_ms
                    ),
                },
            )
            ping_when_idle(engine)
            _engines[url] = engine
        return engine


# A connection checked in less than this long ago is handed out without a ping.
IDLE_PING_SECONDS = 1.0


def ping_when_idle(engine: Engine, idle_seconds: float = IDLE_PING_SECONDS) -> None:
    """Ping a pooled connection at check-out only when it has been idle.

    A restarted PostgreSQL must not fail the next task, which `pool_pre_ping` ensures by a
    round trip before every check-out. Under load that round trip is a fifth of a small
    heartbeat transaction's, and a connection used a moment ago needs no proof: if the
    server went away since, the statement fails as a disconnect, SQLAlchemy invalidates
    the connection, and the message is retried like any dependency failure. An idle
    connection (the usual victim of a restart) is still pinged; a failed ping makes the
    pool hand out a fresh connection instead (SQLAlchemy's DisconnectionError).
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is not None and time.monotonic() - checked_in_at < idle_seconds:
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        except Exception as error:
            raise exc.DisconnectionError() from error
        finally:
            with contextlib.suppress(Exception):  # a dead connection is replaced anyway
                cursor.close()


def array_literal(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of ids or hex digests (no quote or backslash in them),
    for `CAST(:x AS uuid[])`: parsed in one pass, where a bound list goes out as an
    ARRAY[...] constructor of one constant per element."""
    return '{"' + '","'.join(values) + '"}' if values else "{}"


def get_redis(url: str | None = None) -> redis.Redis:
    """The process's client of REDIS_URL (through Sentinel when configured,
    registry/redisconn.py), or of another `url`."""
    settings = get_settings()
    url = url or settings.redis_url
    with _lock:
        client = _redis_clients.get(url)
        if client is None:
            options = {
                "decode_responses": True,
                "socket_timeout": 5,
                "socket_connect_timeout": 5,
                "health_check_interval": 30,
            }
            if url == settings.redis_url:
                client = redis_client(settings, **options)
            else:
                client = redis.Redis.from_url(url, **options)
            _redis_clients[url] = client
        return client


def reset_connections() -> None:
    """Drop pooled connections (after fork, and in tests that change URLs)."""
    with _lock:
        for engine in _engines.values():
            # close=False: the parent's sockets belong to the parent; just forget them.
            engine.dispose(close=False)
        _engines.clear()
    reset_redis_clients()


def dispose_engine(url: str) -> None:
    """Close and forget the engine of `url` only (a store a benchmark or test started and
    stopped); every other engine, and what listens on it, stays."""
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def reset_redis_clients() -> None:
    """Drop the Redis clients only (tests that point REDIS_* elsewhere for a while: the
    engine, and what listens on it, stays the same object)."""
    with _lock:
        for client in _redis_clients.values():
            client.connection_pool.disconnect()
        _redis_clients.clear()
