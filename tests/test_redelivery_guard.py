"""A task id is not a credential (CONTRACT §4.1 step 7).

Only a true redelivery (same task id AND same payload, within the redelivery window)
gets a registration's token back. A message re-sent under a used task id with another
payload, or the same message after the window, is a registration without a token:
`unauthorized`, no token, nothing changed. A true redelivery after a SIGKILL between
commit and acknowledgement still gets its token.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    PUBLIC_IP,
    db_snapshot,
    new_id,
    redis_snapshot,
    tokens_of,
    wait_until,
    workspace,
)
from security_helpers import FreezableProxy, producer, spare_redis_broker  # noqa: F401
from sqlalchemy import Engine, text
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from molecule_registry_client.names import CREATE_WORKSPACE_TASK, REGISTER_TASK, queue_for
from registry.config import get_settings
from registry.ingestion.tokens import hash_token
from registry.limits import redelivery_window_seconds

pytestmark = pytest.mark.integration


def _apply(app: Celery, name: str, payload: dict[str, object], task_id: str) -> dict[str, object]:
    app.loader.import_default_modules()
    return app.tasks[name].apply(args=[payload], task_id=task_id).get()


def test_resent_registration_with_another_payload_is_unauthorized(
    db: Engine, celery_app: Celery, redis_client: redis.Redis
) -> None:
    ws = new_id()
    task_id = str(uuid.uuid4())
    first = _apply(
        celery_app,
        REGISTER_TASK,
        {"id": ws, "agent_card": {"name": "a"}, "delivery_mode": "poll"},
        task_id,
    )
    assert first["status"] == "registered" and first["auth_token"]
    before_db, before_redis = db_snapshot(db), redis_snapshot(redis_client)

    # Hours later, someone who read the task id in a log re-sends it with their own URL.
    hijack = {
        "id": ws,
        "agent_card": {"name": "evil"},
        "delivery_mode": "push",
        "url": f"http://{PUBLIC_IP}/steal",
    }
    answer = _apply(celery_app, REGISTER_TASK, hijack, task_id)

    assert answer == {"status": "unauthorized", "error": answer["error"]}
    assert "auth_token" in answer["error"]
    assert db_snapshot(db) == before_db  # nothing overwritten: url, card, tokens, events
    assert redis_snapshot(redis_client) == before_redis
    assert workspace(db, ws).agent_card == {"name": "a", "description": "a"}  # filled (§12)


def test_same_message_after_the_redelivery_window_is_unauthorized(
    db: Engine, celery_app: Celery
) -> None:
    ws = new_id()
    task_id = str(uuid.uuid4())
    payload = {"id": ws, "agent_card": {"name": "a"}, "delivery_mode": "poll"}
    assert "auth_token" in _apply(celery_app, REGISTER_TASK, payload, task_id)
    window = redelivery_window_seconds(get_settings())
    with db.begin() as conn:  # time moves by writing timestamps into the past
        conn.execute(
            text(
                "UPDATE workspace_auth_tokens SET created_at = now() - make_interval(secs => :s) "
                "WHERE workspace_id = :ws"
            ),
            {"s": window + 5, "ws": ws},
        )
    before = db_snapshot(db)

    answer = _apply(celery_app, REGISTER_TASK, payload, task_id)

    assert answer["status"] == "unauthorized" and "auth_token" not in answer
    assert db_snapshot(db) == before


def test_resent_external_creation_with_another_payload_gets_no_token(
    db: Engine, celery_app: Celery
) -> None:
    task_id = str(uuid.uuid4())
    payload = {"name": "laptop", "runtime": "external", "tier": 1, "request_secret": "s3cret"}
    first = _apply(celery_app, CREATE_WORKSPACE_TASK, payload, task_id)
    assert first["status"] == "created" and first["auth_token"]
    # A copy carrying the first sender's secret still answers with the same token...
    assert _apply(celery_app, CREATE_WORKSPACE_TASK, payload, task_id) == first
    before = db_snapshot(db)

    # ...but the same task id with another payload never does.
    answer = _apply(celery_app, CREATE_WORKSPACE_TASK, {**payload, "tier": 2}, task_id)

    assert "auth_token" not in answer
    assert db_snapshot(db) == before


def test_true_redelivery_after_sigkill_between_commit_and_ack_gets_its_token(
    db: Engine,
    spare_redis_broker: str,  # noqa: F811
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    data_url = redis.connection.parse_url(test_env["REDIS_URL"])
    proxy = FreezableProxy(data_url.get("host", "127.0.0.1"), int(data_url.get("port", 6379)))
    env = process_env(
        test_env,
        CELERY_BROKER_URL=spare_redis_broker,
        # The worker's after-commit writes (liveness key, events) go through the proxy.
        REDIS_URL=f"redis://127.0.0.1:{proxy.port}/{data_url.get('db', 0)}",
    )
    argv = celery_worker_argv(concurrency=1)
    app = producer(spare_redis_broker)
    ws = new_id()
    payload = {"id": ws, "agent_card": {"name": "a"}, "delivery_mode": "poll"}
    try:
        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=tmp_path) as doomed:
            proxy.frozen.set()
            task_id = app.send_task(
                REGISTER_TASK, args=[payload], queue=queue_for(REGISTER_TASK)
            ).id
            # Committed (the token row exists), now stuck on its after-commit writes:
            # killed before it could acknowledge the message.
            wait_until(lambda: tokens_of(db, ws), timeout=20, interval=0.02)
            doomed.kill()
        proxy.frozen.clear()
        (issued,) = tokens_of(db, ws)

        with managed_process(argv, env=env, ready=WORKER_READY, log_dir=tmp_path):
            # The broker redelivers the unacknowledged message after its visibility timeout.
            result = app.AsyncResult(task_id).get(timeout=60)
    finally:
        app.close()
        proxy.close()

    assert result["status"] == "registered"
    assert hash_token(result["auth_token"]) == issued.token_hash  # the same token, once
    assert [t.id for t in tokens_of(db, ws)] == [issued.id]


@pytest.mark.parametrize("task", [REGISTER_TASK, CREATE_WORKSPACE_TASK])
def test_a_replayed_message_seen_in_events_and_logs_gets_no_token(
    db: Engine, celery_app: Celery, task: str
) -> None:
    """Task id (worker logs) and payload (the WORKSPACE_ONLINE event) are public: a copy
    of the message re-sent by someone else is no redelivery (CONTRACT §4.1 step 7)."""
    task_id = str(uuid.uuid4())
    if task == REGISTER_TASK:
        payload: dict[str, Any] = {"id": str(uuid.uuid4()), "agent_card": {"name": "a"}}
        payload["delivery_mode"] = "poll"
    else:
        payload = {"name": "laptop", "runtime": "external"}
    first = _apply(celery_app, task, payload, task_id)
    assert first["auth_token"]
    before = db_snapshot(db)

    replay = _apply(celery_app, task, payload, task_id)

    assert "auth_token" not in replay
    if task == REGISTER_TASK:
        assert replay["status"] == "unauthorized"
    assert db_snapshot(db) == before
