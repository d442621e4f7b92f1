"""Test harness: real PostgreSQL and Redis, isolated per test run.

- PostgreSQL: a fresh database per run (`molecule_registry_test_<random>`), migrated
  once with Alembic, dropped at the end; tables are truncated before each test that
  asks for `db`.
- Redis: two logical databases per run (data, broker), reserved with a lock file so
  parallel runs on one machine never share them; the data one is flushed per test.
- Celery: `worker` is a real in-process worker consuming real messages from the
  broker; tests that must kill a worker start a subprocess (see tests/workerproc.py).

The environment is set in `pytest_configure`, before any project module reads it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("TEST_REDIS_BASE", "redis://127.0.0.1:6379")
_LOCK_DIR = Path(os.environ.get("TEST_LOCK_DIR", "/tmp"))

_state: dict[str, Any] = {}


def _reserve_redis_dbs() -> tuple[int, int, IO[str]]:
    """Take a pair of Redis logical databases no other test run on this host holds."""
    import redis

    try:  # a server started with more databases lets more runs share the machine
        count = int(redis.Redis.from_url(f"{REDIS_BASE}/0").config_get("databases")["databases"])
    except Exception:
        count = 16
    for first in range(2, count, 2):
        handle = (_LOCK_DIR / f"molecule-registry-redis-{first}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return first, first + 1, handle
    raise RuntimeError(f"no free Redis databases for this test run ({count} databases)")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # pragma: no cover - xdist is not used
        return
    data_db, broker_db, lock = _reserve_redis_dbs()
    db_name = f"molecule_registry_test_{secrets.token_hex(4)}"
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": f"{REDIS_BASE}/{data_db}",
        "CELERY_BROKER_URL": f"{REDIS_BASE}/{broker_db}",
        "CELERY_RESULT_BACKEND": f"{REDIS_BASE}/{broker_db}",
        # Redelivery of a killed worker's messages within seconds, not minutes.
        "CELERY_VISIBILITY_TIMEOUT": "6",
        "MOLECULE_DEPLOY_MODE": "",
        "MOLECULE_ORG_ID": "",
    }
    os.environ.update(env)
    _state.update(env=env, lock=lock, db_name=db_name, created=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    from registry import migrate
    from registry.config import reload_settings

    reload_settings()
    _state["created"] = True  # from here on the database is dropped at exit, even on failure
    migrate.upgrade(_state["env"]["DATABASE_URL"])
    import redis

    for key in ("REDIS_URL", "CELERY_BROKER_URL"):
        redis.Redis.from_url(_state["env"][key]).flushdb()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _state.get("created"):
        return
    from sqlalchemy import create_engine, text

    from registry.db import reset_connections

    reset_connections()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{_state["db_name"]}" WITH (FORCE)'))
    admin.dispose()
    _state["lock"].close()


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    return dict(_state["env"])


@pytest.fixture(scope="session")
def engine():
    from registry.db import get_engine

    return get_engine()


@pytest.fixture
def redis_client():
    from registry.db import get_redis

    client = get_redis()
    client.flushdb()
    return client


@pytest.fixture
def db(engine, redis_client):
    """A clean registry: empty tables and an empty Redis data database."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE workspaces, workspace_auth_tokens, structure_events, event_outbox, "
                "heartbeat_probes, incidents, incident_signals RESTART IDENTITY CASCADE"
            )
        )
        # Self-preservation state is one row; a test that left it active must not
        # pause the next test's sweeps.
        conn.execute(
            text(
                "UPDATE registry_self_preservation "
                "SET active = false, reason = NULL, figures = NULL, since = NULL"
            )
        )
    return engine


@pytest.fixture(scope="session")
def celery_app():
    from workers.app import app

    app.loader.import_default_modules()  # every task registered, as in a worker
    return app


@pytest.fixture(scope="session")
def worker(celery_app) -> Iterator[Any]:
    """A real Celery worker in this process, consuming every registry queue."""
    from celery.contrib.testing.worker import start_worker

    from workers.app import QUEUE_NAMES

    with start_worker(
        celery_app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        queues=list(QUEUE_NAMES),
        shutdown_timeout=30,
        loglevel="WARNING",
    ) as w:
        yield w


@pytest.fixture
def events_stream_broadcasts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """EVENTS_STREAM_BROADCASTS on (CONTRACT §7's small-fleet option): heartbeats and task
    updates are appended to events:stream too, for tests of readers that follow the stream."""
    from registry.config import reload_settings

    monkeypatch.setenv("EVENTS_STREAM_BROADCASTS", "true")
    reload_settings()
    yield
    monkeypatch.delenv("EVENTS_STREAM_BROADCASTS", raising=False)
    reload_settings()
