"""`molecule-registry demo` refuses a database it does not recognise as a demo database.

Pointed at a real registry, the demo's 10-second provisioning timeout and fake
container engine would fail every real `provisioning` workspace within seconds. So it
exits non-zero with one line, and changes nothing, unless the database's name ends in
`_demo`, the demo created it, or the operator passes `--allow-any-database`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from demo_helpers import scratch_database
from sqlalchemy import create_engine, text

from molecule_registry_demo.dbguard import (
    NotADemoDatabase,
    check_demo_database,
    mark_as_demo_database,
)
from registry import migrate

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "molecule-registry")


def _snapshot(database_url: str) -> list[tuple[str, ...]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            ).scalars()
            return [
                (
                    table,
                    *conn.execute(text(f'SELECT t::text FROM "{table}" t ORDER BY 1')).scalars(),
                )
                for table in list(tables)
            ]
    finally:
        engine.dispose()


def _production_like(database_url: str) -> None:
    """A migrated registry with a real workspace still provisioning."""
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, created_at) VALUES "
                "(gen_random_uuid(), 'customer-box', 'provisioning', now() - interval '1 minute')"
            )
        )
    engine.dispose()


def test_demo_against_a_non_demo_database_exits_with_one_line_and_changes_nothing(
    test_env: dict[str, str], tmp_path: Path
) -> None:
    with scratch_database(test_env["DATABASE_URL"], "prod") as database_url:
        _production_like(database_url)
        before = _snapshot(database_url)
        env = dict(test_env, DATABASE_URL=database_url)
        log_dir = tmp_path / "logs"

        done = subprocess.run(
            [CLI, "demo", "--fleet", "3", "--duration", "1", "--log-dir", str(log_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("Error: refusing to run the demo against database ")
        assert "--allow-any-database" in lines[0]
        assert "migrating" not in done.stdout
        assert not log_dir.exists()  # no process was started
        assert _snapshot(database_url) == before


def test_demo_databases_are_recognised(test_env: dict[str, str]) -> None:
    base = test_env["DATABASE_URL"]
    with scratch_database(base, "demo") as named_demo:
        migrate.upgrade(named_demo)
        assert check_demo_database(named_demo, allow_any=False) is False
    with scratch_database(base, "fresh") as fresh:
        # Missing: the demo will create it, then mark it as its own.
        assert check_demo_database(fresh, allow_any=False) is True
        migrate.upgrade(fresh)
        with pytest.raises(NotADemoDatabase):
            check_demo_database(fresh, allow_any=False)
        mark_as_demo_database(fresh)
        assert check_demo_database(fresh, allow_any=False) is False
    with scratch_database(base, "other") as other:
        migrate.upgrade(other)
        assert check_demo_database(other, allow_any=True) is False  # told explicitly
