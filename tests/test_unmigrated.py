"""Facing a database without the registry's schema, or with an older one, every command
says so in one line and exits non-zero; the worker refuses to start (issue 11, item 2).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from workerproc import PROJECT_ROOT, celery_worker_argv, process_env

from registry.migrate import alembic_config

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("molecule-registry"))
WS = "6b1c1a38-52b5-4c57-8d1d-6b6bd9b8b0f4"


def _scratch_database(test_env: dict[str, str], revision: str | None) -> Iterator[str]:
    base, _ = test_env["DATABASE_URL"].rsplit("/", 1)
    name = f"molecule_registry_scratch_{secrets.token_hex(4)}"
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    try:
        if revision:
            command.upgrade(alembic_config(url), revision)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def empty_database(test_env: dict[str, str]) -> Iterator[str]:
    yield from _scratch_database(test_env, None)


@pytest.fixture
def old_database(test_env: dict[str, str]) -> Iterator[str]:
    yield from _scratch_database(test_env, "0001")


COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["events", "--no-follow"],
    ["events"],  # following: must fail at once, not wait for the stream
    ["workspace", "show", WS],
    ["workspace", "create", "w1"],
    ["workspace", "remove", WS],
    ["self-preservation"],
    ["can-communicate", WS, WS],
]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _one_clear_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for fragment in expected:
        assert fragment in lines[0]
    assert "molecule-registry migrate" in lines[0]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_cli_on_an_unmigrated_database(args, empty_database, test_env) -> None:
    done = _run([CLI, *args], process_env(test_env, DATABASE_URL=empty_database))
    _one_clear_line(done, "no registry schema", empty_database.rsplit("/", 1)[1])
    assert done.stdout == ""


# (Commands whose queries the older schema still answers, such as `status`, just work.)
@pytest.mark.parametrize("args", [["events", "--no-follow"], ["self-preservation"]])
def test_cli_on_a_database_behind_head(args, old_database, test_env) -> None:
    done = _run([CLI, *args], process_env(test_env, DATABASE_URL=old_database))
    _one_clear_line(done, "revision 0001, not at head")


def test_migrate_then_the_same_command_works(empty_database, test_env) -> None:
    env = process_env(test_env, DATABASE_URL=empty_database)
    assert _run([CLI, "status"], env).returncode != 0
    assert _run([CLI, "migrate"], env).returncode == 0
    done = _run([CLI, "status"], env)
    assert done.returncode == 0, done.stderr
    assert "no workspaces match" in done.stdout


def test_worker_refuses_an_unmigrated_database(empty_database, test_env) -> None:
    from liveness_helpers import free_port

    # Metrics on: a worker that refuses to start must not leave a metrics directory.
    env = process_env(test_env, DATABASE_URL=empty_database, METRICS_PORT=str(free_port()))
    worker = subprocess.Popen(
        celery_worker_argv(),
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode != 0
    assert "Traceback" not in stdout + stderr
    refusal = [line for line in stderr.splitlines() if "worker not started" in line]
    assert len(refusal) == 1, stderr
    assert "no registry schema" in refusal[0]
    assert "run `molecule-registry migrate`" in refusal[0]
    assert " ready." not in stdout + stderr
    assert not list(Path(tempfile.gettempdir()).glob(f"molecule-registry-metrics-{worker.pid}-*"))


def test_worker_refuses_a_database_behind_head(old_database, test_env) -> None:
    done = _run(celery_worker_argv(), process_env(test_env, DATABASE_URL=old_database))
    assert done.returncode != 0
    assert "at schema revision 0001, not at head" in done.stderr


def test_worker_starts_on_an_unreachable_database_and_says_so(test_env, tmp_path) -> None:
    """Unreachable is not unmigrated: the worker starts (tasks retry) and warns."""
    from liveness_helpers import free_port
    from workerproc import WORKER_READY, managed_process

    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere"
    env = process_env(test_env, DATABASE_URL=url)
    with managed_process(
        celery_worker_argv(), env=env, ready=WORKER_READY, log_dir=tmp_path, name="w"
    ) as worker:
        assert "cannot check the schema" in worker.log()


def test_listener_refuses_an_unmigrated_database(empty_database, test_env) -> None:
    from liveness_helpers import listener_argv

    done = _run(listener_argv(), process_env(test_env, DATABASE_URL=empty_database))
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "cannot start" in line]
    assert "no registry schema" in line and "molecule-registry migrate" in line
