"""Check-out pings only idle connections (registry.db.ping_when_idle), on real PostgreSQL.

A connection whose server session died is replaced: at check-out when it was idle, or
after its first statement fails as a disconnect when it was used a moment ago.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, exc, text
from sqlalchemy.pool import NullPool

from registry.config import get_settings
from registry.db import ping_when_idle


def _backend_pid(conn) -> int:
    return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pid: int) -> None:
    """End a server session from a connection of its own (not from the pool under test)."""
    other_engine = create_engine(get_settings().database_url, poolclass=NullPool)
    with other_engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        other.commit()
    other_engine.dispose()


@pytest.fixture
def make_engine():
    engines = []

    def make(idle_seconds: float):
        engine = create_engine(get_settings().database_url, pool_size=1, max_overflow=1)
        ping_when_idle(engine, idle_seconds)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def test_an_idle_connection_whose_server_went_away_is_replaced_at_check_out(make_engine):
    engine = make_engine(idle_seconds=0.0)  # every check-out counts as idle
    with engine.connect() as conn:
        dead_pid = _backend_pid(conn)
    _terminate(dead_pid)

    with engine.connect() as conn:  # the ping fails, the pool hands out a new connection
        assert _backend_pid(conn) != dead_pid
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_a_recently_used_connection_is_not_pinged_and_a_dead_one_fails_once_then_recovers(
    make_engine,
):
    engine = make_engine(idle_seconds=3600.0)
    with engine.connect() as conn:
        dead_pid = _backend_pid(conn)
    _terminate(dead_pid)

    # No ping at check-out: the dead session shows in the first statement.
    with pytest.raises(exc.OperationalError) as raised, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert raised.value.connection_invalidated  # what makes the message a retry, not a loss

    with engine.connect() as conn:  # the invalidated connection was not pooled again
        assert _backend_pid(conn) != dead_pid
