"""Helpers the benchmarks share: their docs sections, a fresh database, a seeded fleet.

Nothing here imports the registry at module level: a benchmark points DATABASE_URL and
REDIS_URL at its own database first, and only then may a registry module read them.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_MD = ROOT / "docs" / "PERFORMANCE.md"
PG_BASE = "postgresql+psycopg2://postgres@127.0.0.1:5432"
ADMIN_URL = f"{PG_BASE}/postgres"
REDIS_BASE = os.environ.get("BENCH_REDIS_BASE", "redis://127.0.0.1:6379")
# The lock files of tests/conftest.py: a benchmark and a test run never share Redis.
LOCK_DIR = Path(os.environ.get("TEST_LOCK_DIR", "/tmp"))


# --------------------------------------------------------------------------- docs


def write_section(
    path: Path,
    marker: str,
    text: str,
    *,
    heading: str | None = None,
    required: bool = False,
) -> None:
    """Put `text` between `<!-- {marker}:begin -->` and `<!-- {marker}:end -->` in `path`.

    The text is written literally (string slicing, no regular-expression template, so a
    backslash or `\\1` in a table cell stays as it is). An existing section is replaced;
    a missing one is appended, after `heading` when one is given, unless `required`.
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text}\n{end}"
    current = path.read_text() if path.exists() else ""
    start = current.find(begin)
    if start >= 0:
        stop = current.find(end, start + len(begin))
        if stop < 0:
            raise SystemExit(f"{path} has {begin} but no {end}")
        current = current[:start] + block + current[stop + len(end) :]
    elif required:
        raise SystemExit(f"{path} has no {begin} ... {end} block")
    else:
        lead = current.rstrip() + "\n\n" if current.strip() else ""
        current = lead + (f"{heading}\n\n" if heading else "") + block + "\n"
    path.write_text(current)


# --------------------------------------------------------------------------- services


def reserve_redis_dbs(base: str = REDIS_BASE) -> tuple[int, int, IO[str]]:
    """A pair of empty Redis databases no test run or other benchmark on this host holds.

    The same lock files as tests/conftest.py, so a benchmark and a test run never share
    a database; a pair that is not empty is in use by something that does not take
    the lock (another benchmark or a demo) and is passed over.
    """
    import redis

    try:
        count = int(redis.Redis.from_url(f"{base}/0").config_get("databases")["databases"])
    except Exception:
        count = 16
    for first in range(2, count - 1, 2):
        handle = (LOCK_DIR / f"molecule-registry-redis-{first}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if any(redis.Redis.from_url(f"{base}/{db}").dbsize() for db in (first, first + 1)):
            handle.close()
            continue
        return first, first + 1, handle
    raise RuntimeError(f"no free pair of empty Redis databases ({count} databases)")


def service_env(
    database: str, redis_url: str, broker_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The registry's settings for database `database` and these Redis databases."""
    broker = broker_url or redis_url
    return {
        "DATABASE_URL": database_url(database),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        **extra,
    }


# --------------------------------------------------------------------------- database


def database_url(name: str) -> str:
    return f"{PG_BASE}/{name}"


def unique_database_name(prefix: str) -> str:
    """A name of this run's own: two runs on one machine never drop each other's."""
    return f"{prefix}_{secrets.token_hex(4)}"


def admin_execute(sql: str, admin_url: str = ADMIN_URL) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE need that)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(sql))
    finally:
        admin.dispose()


def drop_database(name: str, admin_url: str = ADMIN_URL) -> None:
    from registry.db import reset_connections

    reset_connections()  # our pooled connections would otherwise hold it open
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', admin_url)


def create_database(name: str, admin_url: str = ADMIN_URL) -> str:
    """Database `name` dropped if left over, created and migrated; its URL."""
    from registry import migrate

    drop_database(name, admin_url)
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)  # creates the database too
    return url


@contextmanager
def fresh_database(name: str, admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A migrated database `name` (its URL) for the block, dropped after it."""
    url = create_database(name, admin_url)
    try:
        yield url
    finally:
        drop_database(name, admin_url)


# --------------------------------------------------------------------------- fleet


def seed_fleet(
    size: int,
    *,
    tokens: bool = True,
    token_used: bool = True,
    columns: Mapping[str, str] | None = None,
    analyze: bool = True,
) -> dict[str, str]:
    """`size` online workspaces (id -> bearer token, "" without `tokens`).

    `columns` adds workspace columns as SQL expressions (e.g. {"active_tasks": "1"});
    `token_used` marks the tokens used just now, so authenticating them writes nothing;
    a token's stored prefix is its first 8 characters, as the registry stores it;
    `analyze` vacuums the tables so the planner sees the fleet as it is.
    """
    from sqlalchemy import text

    from registry.db import get_engine
    from registry.ingestion.tokens import hash_token

    extra = dict(columns or {})
    names = ", ".join(["id", "name", "status", "registered_at", "last_heartbeat_at", *extra])
    values = ", ".join(["id", "id::text", "'online'", "now()", "now()", *extra.values()])
    fleet = {str(uuid.uuid4()): secrets.token_urlsafe(32) if tokens else "" for _ in range(size)}
    ids = list(fleet)
    with get_engine().begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO workspaces ({names}) "
                f"SELECT {values} FROM unnest(CAST(:ids AS uuid[])) id"
            ),
            {"ids": ids},
        )
        if tokens:
            used = (", last_used_at", ", now()") if token_used else ("", "")
            conn.execute(
                text(
                    f"INSERT INTO workspace_auth_tokens (workspace_id, token_hash, prefix{used[0]}) "
                    f"SELECT ws, h, left(p, 8){used[1]} "
                    "FROM unnest(CAST(:ids AS uuid[]), CAST(:hashes AS text[]), "
                    "CAST(:tokens AS text[])) AS t(ws, h, p)"
                ),
                {
                    "ids": ids,
                    "hashes": [hash_token(t) for t in fleet.values()],
                    "tokens": list(fleet.values()),
                },
            )
    if analyze:
        vacuum_analyze("workspaces", *(["workspace_auth_tokens"] if tokens else []))
    return fleet


def vacuum_analyze(*tables: str) -> None:
    from sqlalchemy import text

    from registry.db import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"VACUUM ANALYZE {table}"))


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port nothing listens on now (for a server this benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Until something accepts connections on `port` (a server this benchmark started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")
