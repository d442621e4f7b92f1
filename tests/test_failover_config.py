"""Clustered stores configured wrong are refused at start, in one line (CONTRACT §2).

A `DATABASE_URL` reaching only a read-only standby (a private primary + synchronous
standby, scripts/pg-standby.sh), and a broker node list with a typo, stop every
process that would use them, and `molecule-registry doctor` says why; a listed broker
node that is merely down does not stop a worker. The multi-host `DATABASE_URL`
reaches the primary, whichever node is listed first.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sentinel_helpers import PgPair
from sqlalchemy import create_engine, text
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from registry import migrate

pytestmark = pytest.mark.integration


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("molecule-registry")), *args]


def _listener() -> list[str]:
    return [sys.executable, "-m", "workers.liveness"]


def _refused(env, tmp_path: Path, processes, message: str) -> None:
    for name, (argv, status) in processes.items():
        with managed_process(argv, env=env, log_dir=tmp_path, name=name) as proc:
            assert proc.proc.wait(timeout=60) == status, f"{name}:\n{proc.tail()}"
            output = proc.log()
            assert message in output, f"{name}:\n{output}"
            assert "Traceback" not in output, f"{name}:\n{output}"


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[PgPair]:
    # Under /var/tmp: the `postgres` user must reach the data directories.
    pair = PgPair(Path("/var/tmp") / f"molecule-test-pg-{secrets.token_hex(4)}")
    pair.start()
    try:
        migrate.upgrade(pair.url())
        yield pair
    finally:
        pair.stop()
        import shutil

        shutil.rmtree(pair.dir, ignore_errors=True)


def test_the_multi_host_url_reaches_the_primary_whichever_node_comes_first(pg_pair):
    reversed_url = (
        f"postgresql+psycopg2://postgres@/molecule_registry?host=127.0.0.1:{pg_pair.standby_port}"
        f"&host=127.0.0.1:{pg_pair.primary_port}&target_session_attrs=read-write"
    )
    for url in (pg_pair.url(), reversed_url):
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
                assert conn.execute(text("SELECT inet_server_port()")).scalar() == (
                    pg_pair.primary_port
                )
            assert migrate.check_schema(engine)
        finally:
            engine.dispose()


def test_a_read_only_standby_url_is_refused_at_start(db, test_env, pg_pair, tmp_path: Path):
    env = process_env(test_env, DATABASE_URL=pg_pair.standby_url())
    _refused(
        env,
        tmp_path,
        {
            "listener": (_listener(), 2),
            "worker": (celery_worker_argv(concurrency=1), 78),
            "gateway": (_cli("gateway", "--port", "0"), 1),
            "doctor": (_cli("doctor"), 1),
        },
        "the database is a read-only standby",
    )
    # Nothing was written there, nor could be: the standby's schema is the primary's.
    engine = create_engine(pg_pair.url())
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM workspaces")).scalar() == 0
    finally:
        engine.dispose()


TYPO = "amqp://guest:guest@127.0.0.1:5672//;amqp://guest:guest@rabbit-typo.invalid:5672//"


def test_a_broker_node_list_with_a_typo_is_refused_at_start(db, test_env, tmp_path: Path):
    env = process_env(test_env, CELERY_BROKER_URL=TYPO, CELERY_RESULT_BACKEND=test_env["REDIS_URL"])
    _refused(
        env,
        tmp_path,
        {
            "worker": (celery_worker_argv(concurrency=1), 78),
            "gateway": (_cli("gateway", "--port", "0"), 1),
            "doctor": (_cli("doctor"), 1),
        },
        "rabbit-typo.invalid:5672//, whose host 'rabbit-typo.invalid' does not resolve",
    )


def test_a_listed_broker_node_that_is_down_only_warns(db, test_env, tmp_path: Path):
    from liveness_helpers import free_port

    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    env = process_env(
        test_env,
        CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:5672//;{down}",
        CELERY_RESULT_BACKEND=test_env["REDIS_URL"],
    )
    with managed_process(
        celery_worker_argv(queues=["registry.sweeps"], concurrency=1),
        env=env,
        log_dir=tmp_path,
        ready=WORKER_READY,
        name="worker",
    ) as worker:
        assert (
            worker.count(r"broker node amqp://guest:\*\*\*@127\.0\.0\.1:\d+// .*does not answer")
            == 1
        )
