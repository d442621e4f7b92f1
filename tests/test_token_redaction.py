"""No plaintext token outside the producer's result (CONTRACT §4.1 step 8).

A real worker subprocess, started the documented way with task events on (`-E`), at
INFO and at DEBUG: a first registration, an external creation, a heartbeat and a card
update carrying the token (sent by a plain producer that sets no `argsrepr`, the worst
case). The token reaches its producer and appears in no log line and no task event.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from pathlib import Path

import pytest
from ingest_helpers import new_id, wait_until
from security_helpers import producer, spare_redis_broker, task_events  # noqa: F401
from sqlalchemy import Engine
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from molecule_registry_client.names import (
    CREATE_WORKSPACE_TASK,
    HEARTBEAT_TASK,
    REGISTER_TASK,
    UPDATE_CARD_TASK,
    queue_for,
)
from registry.redaction import REDACTED, install_log_redaction, redact, redact_value

TOKEN = "Zq3x_7Yk-1bVfQ9rT2uW8eLmN4oP6sA0cD5gH3jK1lM"  # the shape of an issued token


@pytest.mark.parametrize(
    "text",
    [
        f"{{'auth_token': '{TOKEN}', 'id': 'x'}}",
        f'{{"auth_token": "{TOKEN}"}}',
        f"auth_token={TOKEN}",
        f'b\'[[{{"workspace_id": "w", "auth_token": "{TOKEN}"}}], {{}}]\'',
        f'"{{\\"auth_token\\": \\"{TOKEN}\\"}}"',
        f"bare {TOKEN} in a sentence",
        "{'auth_token': 'short-but-secret'}",
    ],
)
def test_redact_removes_the_token_in_every_textual_form(text: str) -> None:
    clean = redact(text)
    assert TOKEN not in clean
    assert "short-but-secret" not in clean
    assert REDACTED in clean
    assert redact(clean) == clean  # idempotent: redacting twice changes nothing more


def test_redact_keeps_ids_and_ordinary_text() -> None:
    text = f"Task registry.register[{uuid.uuid4()}] received: error_rate=0.5 sha={'a' * 64}"
    assert redact(text) == text
    assert redact_value({"auth_token": "x", "n": [1, {"auth_token": "y"}]}) == {
        "auth_token": REDACTED,
        "n": [1, {"auth_token": REDACTED}],
    }


def test_log_records_and_tracebacks_are_redacted() -> None:
    install_log_redaction()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("payload %r", {"auth_token": TOKEN})
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    written = out.getvalue()
    assert TOKEN not in written
    assert "payload {'auth_token': '[redacted]'}" in written
    assert "ValueError: bad token [redacted]" in written


@pytest.mark.integration
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_no_token_in_worker_log_or_task_events(
    db: Engine,
    spare_redis_broker: str,  # noqa: F811
    test_env: dict[str, str],
    tmp_path: Path,
    level: str,
) -> None:
    env = process_env(test_env, CELERY_BROKER_URL=spare_redis_broker)
    argv = celery_worker_argv(concurrency=1, extra=["-l", level, "-E"])
    app = producer(spare_redis_broker)

    def call(name: str, payload: dict[str, object]) -> dict[str, object]:
        sent = app.send_task(name, args=[payload], queue=queue_for(name))
        return sent.get(timeout=30)

    ws = new_id()
    try:
        with (
            managed_process(argv, env=env, ready=WORKER_READY, log_dir=tmp_path) as worker,
            task_events(spare_redis_broker) as events,
        ):
            registered = call(
                REGISTER_TASK, {"id": ws, "agent_card": {"n": 1}, "delivery_mode": "poll"}
            )
            created = call(CREATE_WORKSPACE_TASK, {"name": "laptop", "runtime": "external"})
            token = str(registered["auth_token"])
            external_token = str(created["auth_token"])
            # The producer sets no argsrepr: the worker must not echo what it received.
            hb = app.send_task(
                HEARTBEAT_TASK,
                args=[{"workspace_id": ws, "auth_token": token}],
                queue=queue_for(HEARTBEAT_TASK),
            )
            card = call(
                UPDATE_CARD_TASK, {"workspace_id": ws, "agent_card": {}, "auth_token": token}
            )
            assert card["status"] == "updated"
            # A refusal quoting a bad token must not echo it either.
            wrong = call(REGISTER_TASK, {"id": ws, "agent_card": {}, "auth_token": "x" * 43})
            assert wrong["status"] == "unauthorized"
            wait_until(lambda: worker.count(rf"{hb.id}\] succeeded") == 1, timeout=30)
            worker.wait_for_log(r"succeeded in", count=5, timeout=30)
    finally:
        app.close()

    assert registered["status"] == "registered" and created["status"] == "created"
    log = worker.log()
    kinds = {e["type"] for e in events}
    assert {"task-received", "task-started", "task-succeeded"} <= kinds, kinds
    if level == "DEBUG":  # the pool logs every raw message body at DEBUG
        assert re.search(r"TaskPool: Apply", log), log[-2000:]
    for secret in (token, external_token, "x" * 43):
        assert secret not in log, f"token in the {level} worker log"
        assert not any(secret in repr(e) for e in events), "token in a task event"
    assert REDACTED in log


def _a_message_task():
    """A registry message task: `run_message` is the base task's one plumbing path."""
    from molecule_registry_client.names import REMOVE_WORKSPACE_TASK
    from workers.app import app

    app.loader.import_default_modules()
    return app.tasks[REMOVE_WORKSPACE_TASK]


def test_an_exception_quoting_a_token_is_replaced_before_it_leaves_the_task() -> None:
    from registry.ingestion.payloads import RemoveWorkspacePayload

    run_message = _a_message_task().run_message

    def failing(_uow: object, _payload: object) -> dict[str, object]:
        raise ValueError(f"unexpected trouble with {TOKEN}")

    with pytest.raises(RuntimeError) as raised:
        run_message(RemoveWorkspacePayload, {"workspace_id": str(uuid.uuid4())}, failing)
    assert TOKEN not in str(raised.value)
    assert str(raised.value) == "ValueError: unexpected trouble with [redacted]"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_exception_without_a_token_is_left_as_it_is() -> None:
    from registry.ingestion.payloads import RemoveWorkspacePayload

    run_message = _a_message_task().run_message

    def failing(_uow: object, _payload: object) -> dict[str, object]:
        raise KeyError("nothing secret")

    with pytest.raises(KeyError):
        run_message(RemoveWorkspacePayload, {"workspace_id": str(uuid.uuid4())}, failing)
