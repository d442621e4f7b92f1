"""Messages survive their worker (CONTRACT §4): redelivered, applied once, nobody locked out.

- A registration redelivered after its commit (same task id) answers with the same
  token, and that token is never stored in plaintext.
- A worker SIGKILLed while it holds messages (two stalled on a row lock, the rest
  prefetched) loses none: a fresh worker applies each exactly once. Against the Redis
  broker and against RabbitMQ.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    heartbeat_now,
    iter_text_columns,
    lock_waiters,
    new_id,
    recorded_events,
    register_now,
    send,
    set_status,
    stream_events,
    task_named,
    tokens_of,
    update_card_now,
    wait_until,
    workspace,
)
from sqlalchemy import Engine, text
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

import celeryconfig
from molecule_registry_client.names import (
    CREATE_WORKSPACE_TASK,
    HEARTBEAT_TASK,
    QUEUE_NAMES,
    REGISTER_TASK,
    UPDATE_CARD_TASK,
)
from registry.ingestion.tokens import hash_token

pytestmark = pytest.mark.integration

AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672"
WORKER_CONCURRENCY = 2


# ---------------------------------------------------------------------------
# Registration redelivered after its commit


def test_redelivered_registration_answers_the_same_token(db: Engine, celery_app: Celery) -> None:
    ws = new_id()
    task = task_named(celery_app, REGISTER_TASK)
    # Applied in-process there is no broker delivery to prove a redelivery by, so the
    # copy proves itself with its sender's secret (CONTRACT §4.1 step 7; the broker's
    # own proof is tested through a SIGKILLed worker in test_redelivery_guard.py).
    payload = {"id": ws, "agent_card": {"name": "a"}, "delivery_mode": "poll"}
    payload["request_secret"] = "only-the-first-sender-knows"
    task_id = str(uuid.uuid4())

    first = task.apply(args=[payload], task_id=task_id).get()
    # The worker died before acknowledging: the broker delivers the same message again.
    again = task.apply(args=[payload], task_id=task_id).get()

    assert first["status"] == again["status"] == "registered"
    assert first["auth_token"] == again["auth_token"]
    (token_row,) = tokens_of(db, ws)  # no second token was issued
    assert token_row.token_hash == hash_token(first["auth_token"])
    assert token_row.revoked_at is None
    # The agent is not locked out: its token works for heartbeats and registrations.
    assert heartbeat_now(ws, first["auth_token"])["status"] == "ok"
    assert "auth_token" not in register_now(ws, auth_token=first["auth_token"])
    # A different message without the token is still refused (not a hijack path).
    other = task.apply(args=[payload], task_id=str(uuid.uuid4())).get()
    assert other["status"] == "unauthorized"


def test_a_redelivered_registration_does_not_undo_a_later_card_update(
    db: Engine, celery_app: Celery
) -> None:
    ws = new_id()
    task = task_named(celery_app, REGISTER_TASK)
    payload = {"id": ws, "agent_card": {"name": "first"}, "delivery_mode": "poll"}
    payload["request_secret"] = "only-the-first-sender-knows"
    task_id = str(uuid.uuid4())
    first = task.apply(args=[payload], task_id=task_id).get()
    # The agent moves on: its card changes, then its status.
    assert update_card_now(ws, {"name": "newer"}, first["auth_token"])["status"] == "updated"
    set_status(db, ws, "degraded")

    # The first registration's message comes again (its worker died before the ack).
    again = task.apply(args=[payload], task_id=task_id).get()

    assert again["auth_token"] == first["auth_token"]
    assert again["workspace_status"] == "degraded"  # answered from the row, not reapplied
    row = workspace(db, ws)
    assert row.agent_card["name"] == "newer"
    assert row.status == "degraded"


def test_tokens_are_never_stored_in_plaintext(
    db: Engine, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ws = new_id()
    registered = task_named(celery_app, REGISTER_TASK).apply(
        args=[{"id": ws, "agent_card": {"name": "a"}, "delivery_mode": "poll"}],
        task_id=str(uuid.uuid4()),
    )
    created = task_named(celery_app, CREATE_WORKSPACE_TASK).apply(
        args=[{"name": "laptop", "runtime": "external"}], task_id=str(uuid.uuid4())
    )
    tokens = [registered.get()["auth_token"], created.get()["auth_token"]]
    heartbeat_now(ws, tokens[0], current_task="t", error_rate=0.9)

    with db.connect() as conn:
        for table, column in iter_text_columns(db):
            for token in tokens:
                found = conn.execute(
                    text(f'SELECT count(*) FROM {table} WHERE "{column}"::text LIKE :pattern'),
                    {"pattern": f"%{token}%"},
                ).scalar_one()
                assert found == 0, f"token found in {table}.{column}"
    redis_values = [redis_client.get(k) for k in redis_client.scan_iter() if "stream" not in k]
    published = [str(e) for e in stream_events(redis_client)]
    for token in tokens:
        assert not any(token in (value or "") for value in redis_values + published)


# ---------------------------------------------------------------------------
# A worker killed while it holds messages


@pytest.fixture
def spare_redis_broker() -> Iterator[str]:
    """A Redis database of our own as broker, so the in-process `worker` cannot take
    the messages meant for the subprocess workers."""
    from conftest import REDIS_BASE, _reserve_redis_dbs

    first, _second, lock = _reserve_redis_dbs()
    url = f"{REDIS_BASE}/{first}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        lock.close()


def _rabbitmqctl(*args: str) -> bool:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return False
    done = subprocess.run([tool, *args], capture_output=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.fixture
def rabbitmq_broker() -> Iterator[str]:
    """A RabbitMQ vhost of our own (via rabbitmqctl), or the default one, purged."""
    vhost = f"molecule-test-{uuid.uuid4().hex[:8]}"
    if _rabbitmqctl("add_vhost", vhost):
        try:
            assert _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            yield f"{AMQP_BASE}/{vhost}"
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    url = f"{AMQP_BASE}//"
    _purge(url)
    yield url
    _purge(url)


def _purge(broker_url: str) -> None:
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.default_channel
        for queue in QUEUE_NAMES:
            channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            channel.queue_purge(queue)


def _producer(broker_url: str, queue_type: str = "classic") -> Celery:
    """An app that sends to `broker_url` and reads results from the test run's backend.

    (Celery lets the CELERY_BROKER_URL variable win over `broker_url`, but not over
    `broker_write_url`.) It declares the queues as the workers do (`queue_type`).
    """
    app = Celery("redelivery-test-producer")
    app.config_from_object("celeryconfig")
    app.conf.broker_write_url = broker_url
    app.conf.task_queues = celeryconfig.registry_queues(queue_type == "quorum")
    app.conf.task_default_queue_type = queue_type
    return app


def _online_events(engine: Engine, ws: str) -> list[dict[str, Any]]:
    return [p for kind, p in recorded_events(engine, ws) if kind == "WORKSPACE_ONLINE"]


def _kill_a_worker_holding_messages(
    engine: Engine,
    broker_url: str,
    test_env: dict[str, str],
    log_dir: Path,
    queue_type: str = "classic",
) -> None:
    stalled = new_id()  # its row is locked by the test: the worker's tasks on it block
    stalled_token = register_now(stalled)["auth_token"]
    recovering = [new_id() for _ in range(4)]  # offline; a heartbeat brings each online
    tokens = {ws: register_now(ws)["auth_token"] for ws in recovering}
    for ws in recovering:
        set_status(engine, ws, "offline")
    fresh = [new_id() for _ in range(6)]  # first registrations
    events_before = len(recorded_events(engine))

    env = process_env(test_env, CELERY_BROKER_URL=broker_url, BROKER_QUEUE_TYPE=queue_type)
    argv = celery_worker_argv(concurrency=WORKER_CONCURRENCY)
    held = WORKER_CONCURRENCY * celeryconfig.worker_prefetch_multiplier
    producer = _producer(broker_url, queue_type)
    sent: dict[str, str] = {}
    lock = engine.connect()
    lock_tx = lock.begin()
    try:
        lock.execute(text("SELECT 1 FROM workspaces WHERE id = :id FOR UPDATE"), {"id": stalled})
        with managed_process(
            argv, env=env, ready=WORKER_READY, log_dir=log_dir, name="doomed"
        ) as doomed:
            # Stall both pool processes on the locked row, one message at a time, and the
            # heartbeat batcher (it applies heartbeats outside the pool) behind them.
            payload = {"id": stalled, "agent_card": {"v": 2}, "auth_token": stalled_token}
            sent[stalled] = send(producer, REGISTER_TASK, {**payload, "delivery_mode": "poll"})
            wait_until(lambda: lock_waiters(engine) == 1)
            card = {"workspace_id": stalled, "auth_token": stalled_token, "agent_card": {"v": 3}}
            send(producer, UPDATE_CARD_TASK, card)
            wait_until(lambda: lock_waiters(engine) == 2)
            hb = {"workspace_id": stalled, "auth_token": stalled_token, "current_task": "stalled"}
            send(producer, HEARTBEAT_TASK, hb)
            wait_until(lambda: lock_waiters(engine) == 3)
            # Everything else is received (prefetched, unacknowledged) but cannot run.
            for ws in fresh:
                payload = {"id": ws, "agent_card": {"name": ws}, "delivery_mode": "poll"}
                sent[ws] = send(producer, REGISTER_TASK, payload)
            for ws in recovering:
                payload = {"workspace_id": ws, "auth_token": tokens[ws], "current_task": ws}
                send(producer, HEARTBEAT_TASK, payload)
            doomed.wait_for_log(r"Task registry\.\w+\[\S+\] received", count=held)
            doomed.kill()
    finally:
        lock_tx.rollback()
        lock.close()
    # The dead worker committed nothing.
    assert len(recorded_events(engine)) == events_before

    def all_applied() -> bool:
        with engine.connect() as conn:
            online = conn.execute(
                text(
                    "SELECT count(*) FROM workspaces WHERE status = 'online' "
                    "AND (id = ANY(CAST(:fresh AS uuid[])) "
                    "     OR (id = ANY(CAST(:recovering AS uuid[])) AND current_task = id::text))"
                ),
                {"fresh": fresh, "recovering": recovering},
            ).scalar_one()
        row = workspace(engine, stalled)
        return online == len(fresh) + len(recovering) and (
            row.agent_card in (registered_v2, {"v": 3}) and row.current_task == "stalled"
        )

    # A registration fills in the card's name and description (CONTRACT §12).
    registered_v2 = {"v": 2, "name": stalled, "description": stalled}

    try:
        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=log_dir, name="fresh") as w:
            wait_until(all_applied, timeout=45, interval=0.2)
            results = {ws: producer.AsyncResult(tid).get(timeout=10) for ws, tid in sent.items()}
            w.stop()  # warm shutdown: whatever it still runs finishes and is acknowledged
    finally:
        producer.close()

    # Each effect exactly once: one token and one online event per first registration...
    for ws in fresh:
        (token_row,) = tokens_of(engine, ws)
        assert token_row.token_hash == hash_token(results[ws]["auth_token"])
        assert len(_online_events(engine, ws)) == 1
    # ...one re-registration of the stalled workspace (no new token)...
    assert results[stalled]["status"] == "registered"
    assert "auth_token" not in results[stalled]
    assert len(tokens_of(engine, stalled)) == 1
    assert [e["agent_card"] for e in _online_events(engine, stalled)] == [
        {"name": "agent", "description": "agent"},
        registered_v2,
    ]
    # ...one card update...
    cards = [p for kind, p in recorded_events(engine, stalled) if kind == "AGENT_CARD_UPDATED"]
    assert cards == [{"agent_card": {"v": 3}}]
    # ...and one recovery per heartbeat.
    for ws in recovering:
        assert _online_events(engine, ws)[1:] == [{"recovered_from": "offline"}]
    expected = events_before + len(fresh) + 2 + len(recovering)
    assert len(recorded_events(engine)) == expected


def test_worker_killed_while_holding_messages_loses_none_redis(
    db: Engine, spare_redis_broker: str, test_env: dict[str, str], tmp_path: Path
) -> None:
    _kill_a_worker_holding_messages(db, spare_redis_broker, test_env, tmp_path)
    with redis.Redis.from_url(spare_redis_broker) as broker:
        assert [broker.llen(q) for q in QUEUE_NAMES] == [0, 0, 0]
        assert broker.hlen("unacked") == 0  # kombu's delivered-but-unacknowledged messages


def test_worker_killed_while_holding_messages_loses_none_rabbitmq(
    db: Engine, rabbitmq_broker: str, test_env: dict[str, str], tmp_path: Path
) -> None:
    _kill_a_worker_holding_messages(db, rabbitmq_broker, test_env, tmp_path)
