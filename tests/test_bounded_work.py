"""Bounded work: no lookup, lock wait, statement or task runs without a limit.

- The URL guard's DNS lookup runs before the row lock and gives up after
  DNS_TIMEOUT_SECONDS: a hanging name server neither holds the workspace's row nor
  blocks its heartbeats, and the name is refused as unresolvable.
- Every registry connection has a statement_timeout and a lock_timeout.
- A task past its hard time limit is killed and its message acknowledged as failed,
  before the broker's visibility timeout could hand it to a second worker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ingest_helpers import (
    db_snapshot,
    heartbeat_now,
    lock_waiters,
    new_id,
    outcome,
    register_now,
    wait_until,
    workspace,
)
from security_helpers import producer, spare_redis_broker  # noqa: F401
from sqlalchemy import Engine, text
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from molecule_registry_client.names import REGISTER_TASK, queue_for
from registry.config import get_settings, reload_settings
from registry.limits import redelivery_window_seconds, task_time_limits

pytestmark = pytest.mark.integration


class HangingResolver:
    """A name server that answers only when released (or never)."""

    def __init__(self, answer: list[str] | None = None) -> None:
        self.answer = answer or ["93.184.216.34"]
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, host: str) -> list[str]:
        self.entered.set()
        self.release.wait(30)
        return self.answer


@pytest.fixture
def short_dns_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setenv("DNS_TIMEOUT_SECONDS", "0.5")
    reload_settings()
    yield 0.5
    monkeypatch.undo()
    reload_settings()


def test_connections_carry_statement_and_lock_timeouts(db: Engine) -> None:
    settings = get_settings()
    with db.connect() as conn:
        statement = conn.execute(text("SELECT current_setting('statement_timeout')")).scalar()
        lock = conn.execute(text("SELECT current_setting('lock_timeout')")).scalar()
    assert statement == f"{settings.db_statement_timeout_ms // 1000}s"
    assert lock == f"{settings.db_lock_timeout_ms // 1000}s"


def test_a_hanging_dns_lookup_holds_no_row_lock_and_blocks_no_heartbeat(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    resolver = HangingResolver()
    results: list[dict[str, object]] = []
    slow = threading.Thread(
        target=lambda: results.append(
            outcome(
                lambda: register_now(
                    ws,
                    url="http://agent.example.com/",
                    delivery_mode="push",
                    auth_token=token,
                    resolver=resolver,
                )
            )
        )
    )
    slow.start()
    try:
        assert resolver.entered.wait(10), "the registration never reached its DNS lookup"
        started = time.monotonic()
        answer = heartbeat_now(ws, token, current_task="while DNS hangs")
        assert time.monotonic() - started < 2
        assert answer["status"] == "ok"
        assert lock_waiters(db) == 0
        with db.connect() as conn:  # nobody holds the row: NOWAIT would fail if anyone did
            conn.execute(
                text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE NOWAIT"), {"id": ws}
            )
            conn.rollback()
    finally:
        resolver.release.set()
        slow.join(30)
    # The lookup answered (or timed out, on a slow machine); the heartbeat's write stands.
    assert workspace(db, ws).current_task == "while DNS hangs"
    assert results and results[0]["status"] in {"registered", "rejected"}


def test_a_dns_lookup_past_its_timeout_is_refused_and_changes_nothing(
    db: Engine, short_dns_timeout: float
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    before = db_snapshot(db)
    resolver = HangingResolver()
    started = time.monotonic()
    try:
        answer = outcome(
            lambda: register_now(
                ws,
                url="http://slow.example.com/",
                delivery_mode="push",
                auth_token=token,
                resolver=resolver,
            )
        )
    finally:
        resolver.release.set()
    assert time.monotonic() - started < short_dns_timeout + 2
    assert answer["status"] == "rejected"
    assert "does not resolve" in str(answer["error"]) and "0.5 s" in str(answer["error"])
    # Refused after its token was accepted: only the register-failure stamp (§12) is
    # written. Clearing it gives back exactly the state before.
    assert workspace(db, ws).last_register_failure_at is not None
    with db.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET last_register_failure_at = NULL WHERE id = :id"),
            {"id": ws},
        )
    assert db_snapshot(db) == before


def test_time_limits_stay_below_the_visibility_timeout() -> None:
    settings = get_settings()
    soft, hard = task_time_limits(settings)
    assert soft < hard < settings.celery_visibility_timeout
    assert redelivery_window_seconds(settings) > settings.celery_visibility_timeout


def test_a_task_past_its_time_limit_is_stopped_before_its_message_is_redelivered(
    db: Engine,
    spare_redis_broker: str,  # noqa: F811
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    visibility = int(test_env["CELERY_VISIBILITY_TIMEOUT"])
    env = process_env(
        test_env,
        CELERY_BROKER_URL=spare_redis_broker,
        TASK_SOFT_TIME_LIMIT="1",
        TASK_TIME_LIMIT="2",
        DB_LOCK_TIMEOUT_MS="0",  # the task waits on the row lock for as long as it is held
    )
    ws = new_id()
    token = register_now(ws)["auth_token"]
    before = db_snapshot(db)
    app = producer(spare_redis_broker)
    lock = db.connect()
    lock_tx = lock.begin()
    try:
        lock.execute(text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE"), {"id": ws})
        with managed_process(
            celery_worker_argv(concurrency=1), env=env, ready=WORKER_READY, log_dir=tmp_path
        ) as worker:
            payload = {
                "id": ws,
                "agent_card": {"v": 2},
                "auth_token": token,
                "delivery_mode": "poll",
            }
            sent = app.send_task(REGISTER_TASK, args=[payload], queue=queue_for(REGISTER_TASK))
            worker.wait_for_log(rf"Hard time limit \(2(\.0)?s\) exceeded for \S+\[{sent.id}\]")
            lock_tx.rollback()  # the row is free again: a redelivered message would now apply
            # Past the visibility timeout and kombu's restore scan (every 10 s here).
            time.sleep(visibility + 12)
            assert worker.count(rf"\[{sent.id}\] received") == 1, worker.tail()
            state = app.AsyncResult(sent.id).state
    finally:
        if lock_tx.is_active:
            lock_tx.rollback()
        lock.close()
        app.close()
    assert state == "FAILURE"
    with redis.Redis.from_url(spare_redis_broker) as broker:
        assert broker.hlen("unacked") == 0
        assert broker.llen("registry") == 0
    assert db_snapshot(db) == before  # the killed attempt committed nothing
    assert workspace(db, ws).agent_card == {"name": "agent", "description": "agent"}
    assert uuid.UUID(sent.id)
    wait_until(lambda: lock_waiters(db) == 0)
