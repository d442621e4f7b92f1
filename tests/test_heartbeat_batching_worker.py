"""Per-message heartbeats applied in batches (group commit), acknowledged after commit.

- the batcher gathers concurrent heartbeats into few transactions, answers each caller
  with its own result, and splits a batch the database refuses;
- a heartbeat worker (threads pool, as docs/OPERATIONS.md runs it) SIGKILLed while it
  holds a blocked batch and a half-built one loses nothing: a fresh worker applies
  every heartbeat, none twice in effect — on Redis and on RabbitMQ;
- a database connection killed in the middle of a batch: nothing is acknowledged until
  the batch commits, nothing is lost when the database answers again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from ingest_helpers import (
    lock_waiters,
    new_id,
    recorded_events,
    register_now,
    set_status,
    wait_until,
    workspace,
)
from sqlalchemy import Engine, text
from test_redelivery import (  # noqa: F401 - fixtures
    _producer,
    rabbitmq_broker,
    spare_redis_broker,
)
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from molecule_registry_client.names import HEARTBEAT_QUEUE, HEARTBEAT_TASK, QUEUE_NAMES
from registry.ingestion.batcher import HeartbeatBatcher, apply_in_one_transaction
from registry.ingestion.payloads import HeartbeatPayload, parse_payload
from tasks.base import TRANSIENT_ERRORS

pytestmark = pytest.mark.integration

CONCURRENCY = 8
RECEIVED = r"Task registry\.heartbeat\[\S+\] received"


def _heartbeat(ws: str, token: str | None, **fields: Any) -> HeartbeatPayload:
    raw = {"workspace_id": ws, **({"auth_token": token} if token else {}), **fields}
    return parse_payload(HeartbeatPayload, raw)


def _submit_all(batcher: HeartbeatBatcher, heartbeats: Sequence[HeartbeatPayload]) -> list[Any]:
    """Submit from one thread each, all at once, as a threads pool's tasks would."""
    results: list[Any] = [None] * len(heartbeats)

    def run(i: int) -> None:
        try:
            results[i] = batcher.submit(heartbeats[i])
        except Exception as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(heartbeats))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


# ---------------------------------------------------------------------------
# The batcher, in process, against the real database


def test_concurrent_heartbeats_share_transactions_and_get_their_own_results(db: Engine) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id() for _ in range(20))}
    degrading = next(iter(tokens))
    heartbeats = [
        _heartbeat(ws, token, error_rate=0.9 if ws == degrading else 0.0, current_task=ws)
        for ws, token in tokens.items()
    ]
    heartbeats.append(_heartbeat(new_id(), None))  # unknown workspace
    batcher = HeartbeatBatcher(max_items=100, max_wait_seconds=0.2, transient=TRANSIENT_ERRORS)

    results = _submit_all(batcher, heartbeats)

    assert batcher.batches <= 3  # 21 callers, a 200 ms wait: a few transactions, not 21
    assert results[0] == {"status": "ok", "workspace_status": "degraded"}
    assert all(r == {"status": "ok", "workspace_status": "online"} for r in results[1:-1])
    assert results[-1] == {"status": "rejected", "error": "workspace_id: unknown workspace"}
    for ws in tokens:
        assert workspace(db, ws).current_task == ws


def test_a_batch_is_split_when_one_heartbeat_fails_it(db: Engine) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id() for _ in range(6))}
    poison = list(tokens)[2]

    def apply(heartbeats: Sequence[HeartbeatPayload]) -> list[dict[str, Any]]:
        # A heartbeat the database refuses for a reason no validation foresaw.
        if any(str(hb.workspace_id) == poison for hb in heartbeats):
            raise ValueError("refused by the database")
        return apply_in_one_transaction(heartbeats)

    batcher = HeartbeatBatcher(
        apply, max_items=100, max_wait_seconds=0.2, transient=TRANSIENT_ERRORS
    )
    results = _submit_all(
        batcher, [_heartbeat(ws, t, current_task="x") for ws, t in tokens.items()]
    )

    for ws, result in zip(tokens, results, strict=True):
        if ws == poison:
            assert isinstance(result, ValueError)
            assert workspace(db, ws).current_task is None
        else:
            assert result == {"status": "ok", "workspace_status": "online"}
            assert workspace(db, ws).current_task == "x"


# ---------------------------------------------------------------------------
# A real heartbeat worker, killed or cut off from its database


def _heartbeat_worker_argv() -> list[str]:
    return celery_worker_argv([HEARTBEAT_QUEUE], pool="threads", concurrency=CONCURRENCY)


def _offline_fleet(engine: Engine, count: int) -> dict[str, str]:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id() for _ in range(count))}
    for ws in tokens:
        set_status(engine, ws, "offline")
    return tokens


def _recovered_once(engine: Engine, tokens: dict[str, str]) -> None:
    """Every heartbeat applied (the marker written), and each recovery recorded once."""
    for ws in tokens:
        row = workspace(engine, ws)
        assert (row.status, row.current_task) == ("online", ws)
        recoveries = [p for kind, p in recorded_events(engine, ws) if kind == "WORKSPACE_ONLINE"]
        assert recoveries[1:] == [{"recovered_from": "offline"}]  # after the registration


def _all_applied(engine: Engine, tokens: dict[str, str]) -> bool:
    with engine.connect() as conn:
        done = conn.execute(
            text(
                "SELECT count(*) FROM workspaces WHERE id = ANY(CAST(:ids AS uuid[])) "
                "AND status = 'online' AND current_task = id::text"
            ),
            {"ids": list(tokens)},
        ).scalar_one()
    return done == len(tokens)


def _hold_a_row(engine: Engine, ws: str) -> Any:
    conn = engine.connect()
    tx = conn.begin()
    conn.execute(text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE"), {"id": ws})
    return conn, tx


def _kill_while_batching(
    engine: Engine, broker_url: str, test_env: dict[str, str], log_dir: Path
) -> None:
    tokens = _offline_fleet(engine, 12)
    held = next(iter(tokens))
    rest = list(tokens)[1:]
    events_before = len(recorded_events(engine))
    env = process_env(test_env, CELERY_BROKER_URL=broker_url)
    producer = _producer(broker_url)

    def send(ws: str) -> None:
        payload = {"workspace_id": ws, "auth_token": tokens[ws], "current_task": ws}
        producer.send_task(HEARTBEAT_TASK, args=[payload], queue=HEARTBEAT_QUEUE)

    conn, tx = _hold_a_row(engine, held)
    try:
        argv = _heartbeat_worker_argv()
        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=log_dir) as doomed:
            send(held)  # a batch, blocked on the held row
            wait_until(lambda: lock_waiters(engine) == 1)
            for ws in rest:  # the next batch gathers behind it, and the rest is prefetched
                send(ws)
            doomed.wait_for_log(RECEIVED, count=len(tokens))
            assert len(recorded_events(engine)) == events_before  # nothing committed
            doomed.kill()
    finally:
        tx.rollback()
        conn.close()
    assert len(recorded_events(engine)) == events_before

    try:
        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=log_dir) as fresh:
            wait_until(lambda: _all_applied(engine, tokens), timeout=45, interval=0.2)
            fresh.stop()
    finally:
        producer.close()
    _recovered_once(engine, tokens)
    assert len(recorded_events(engine)) == events_before + len(tokens)


def test_heartbeat_worker_killed_mid_batch_loses_nothing_redis(
    db: Engine,
    spare_redis_broker: str,  # noqa: F811 - the fixture imported above
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    _kill_while_batching(db, spare_redis_broker, test_env, tmp_path)
    with redis.Redis.from_url(spare_redis_broker) as broker:
        assert [broker.llen(q) for q in QUEUE_NAMES] == [0, 0, 0]
        assert broker.hlen("unacked") == 0


def test_heartbeat_worker_killed_mid_batch_loses_nothing_rabbitmq(
    db: Engine,
    rabbitmq_broker: str,  # noqa: F811 - the fixture imported above
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    _kill_while_batching(db, rabbitmq_broker, test_env, tmp_path)


def test_a_database_outage_mid_batch_acks_nothing_and_loses_nothing(
    db: Engine,
    spare_redis_broker: str,  # noqa: F811 - the fixture imported above
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    tokens = _offline_fleet(db, 8)
    held = next(iter(tokens))
    events_before = len(recorded_events(db))
    env = process_env(test_env, CELERY_BROKER_URL=spare_redis_broker)
    producer = _producer(spare_redis_broker)
    broker = redis.Redis.from_url(spare_redis_broker)
    conn, tx = _hold_a_row(db, held)
    try:
        argv = _heartbeat_worker_argv()
        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=tmp_path) as worker:
            for n, (ws, token) in enumerate(tokens.items()):
                payload = {"workspace_id": ws, "auth_token": token, "current_task": ws}
                producer.send_task(HEARTBEAT_TASK, args=[payload], queue=HEARTBEAT_QUEUE)
                if n == 0:  # the held row first: its batch blocks, the rest waits behind
                    wait_until(lambda: lock_waiters(db) == 1)
            worker.wait_for_log(RECEIVED, count=len(tokens))
            # The database drops the worker's connection in the middle of its batch.
            with db.connect() as admin:
                killed = admin.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            assert killed == 1
            worker.wait_for_log(r"waiting for a dependency", timeout=20)
            # Retried inside the worker: every message still unacknowledged, nothing applied.
            assert broker.hlen("unacked") == len(tokens)
            assert len(recorded_events(db)) == events_before
            tx.rollback()  # the database answers again
            wait_until(lambda: _all_applied(db, tokens), timeout=30, interval=0.2)
            wait_until(lambda: broker.hlen("unacked") == 0, timeout=10)
            worker.stop()
    finally:
        if tx.is_active:
            tx.rollback()
        conn.close()
        producer.close()
    _recovered_once(db, tokens)
    assert len(recorded_events(db)) == events_before + len(tokens)
    assert broker.llen(HEARTBEAT_QUEUE) == 0
    broker.close()
