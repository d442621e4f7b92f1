"""No message can stop a worker (workers/intake_guard.py; docs/SECURITY.md).

Each hostile message below once made Celery log "Unrecoverable error" and exit, and,
never acknowledged, went on to stop the next worker. Now each is refused (logged
without arguments, counted, acknowledged): the worker stays up, the queues drain, and
a valid heartbeat sent after all of them still applies. On both brokers, against a
real worker process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ingest_helpers import insert_workspace, wait_until, workspace
from kombu import Connection
from liveness_helpers import PrivateRedis, private_rabbitmq_vhost
from message_fuzzing import queues_drained
from sqlalchemy import Engine
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from molecule_registry_client import celery_message
from molecule_registry_client.names import (
    DEFAULT_QUEUE,
    HEARTBEAT_BATCH_TASK,
    HEARTBEAT_QUEUE,
    HEARTBEAT_TASK,
    REGISTER_TASK,
    SWEEP_BACKSTOP_TASK,
    SWEEP_QUEUE,
)
from registry.ingestion.envelope import MAX_BODY_DEPTH, body_bound_error
from registry.ingestion.intake import printable_id as printable
from workers.intake_guard import screen

pytestmark = pytest.mark.integration


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _heartbeat(ws: str, **fields: Any) -> dict[str, Any]:
    return {"workspace_id": ws, **fields}


def hostile_messages() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, queue, publish arguments) of every message shape that used to kill a worker."""
    ws = str(uuid.uuid4())
    out: list[tuple[str, str, dict[str, Any]]] = []

    def task_message(name: str, payload: Any, queue: str, **header_changes: Any) -> None:
        body, headers, _ = celery_message(name, {}, origin="test")
        body = ([payload], {}, body[2])
        headers.update(header_changes)
        label = f"{name}:{sorted(header_changes) or 'payload'}"
        out.append((label, queue, {"body": body, "headers": headers}))

    task_message(HEARTBEAT_TASK, _heartbeat(ws, sent_at=10**400), HEARTBEAT_QUEUE)
    task_message(HEARTBEAT_TASK, _heartbeat(_nested(600)), HEARTBEAT_QUEUE)
    task_message(HEARTBEAT_TASK, _heartbeat(ws), HEARTBEAT_QUEUE, id=["a", "list"])
    task_message(HEARTBEAT_TASK, _heartbeat(ws), HEARTBEAT_QUEUE, expires=12)
    task_message(REGISTER_TASK, {"id": ws, "agent_card": {}}, DEFAULT_QUEUE, expires="")
    task_message(REGISTER_TASK, {"id": ws, "agent_card": {}}, DEFAULT_QUEUE, argsrepr=["a"])
    task_message(REGISTER_TASK, {"id": ws, "agent_card": {}}, DEFAULT_QUEUE, id=["a"])
    task_message(REGISTER_TASK, {"id": ws, "agent_card": {}}, DEFAULT_QUEUE, task=["x"])
    task_message(REGISTER_TASK, {"id": ws, "agent_card": {}}, DEFAULT_QUEUE, retries="many")
    task_message(SWEEP_BACKSTOP_TASK, {}, SWEEP_QUEUE, timelimit="soon")
    task_message("registry.no_such_task", {}, DEFAULT_QUEUE)
    task_message(HEARTBEAT_BATCH_TASK, {"heartbeats": [_nested(40)]}, HEARTBEAT_QUEUE)

    _, headers, _ = celery_message(HEARTBEAT_TASK, {}, origin="test")
    out.append(("heartbeat body []", HEARTBEAT_QUEUE, {"body": [], "headers": headers}))
    _, headers, _ = celery_message(SWEEP_BACKSTOP_TASK, {}, origin="test")
    out.append(
        ("sweep with 3 args", SWEEP_QUEUE, {"body": [[1, 2, 3], {}, {}], "headers": headers})
    )
    _, headers, _ = celery_message(REGISTER_TASK, {}, origin="test")
    out.append(("register body a string", DEFAULT_QUEUE, {"body": "hello", "headers": headers}))
    _, headers, _ = celery_message(HEARTBEAT_TASK, {}, origin="test")
    raw = {"body": b"{not json", "headers": headers, "content_type": "application/json"}
    out.append(("undecodable", HEARTBEAT_QUEUE, raw))
    deep = ("[" * 5000 + "]" * 5000).encode()
    out.append(("deeper than the decoder", HEARTBEAT_QUEUE, {**raw, "body": deep}))
    text = {"body": b"plain", "headers": headers, "content_type": "text/plain"}
    out.append(("text/plain", HEARTBEAT_QUEUE, text))
    pickled = {
        "body": b"\x80\x04N.",
        "headers": headers,
        "content_type": "application/x-python-serialize",
    }
    out.append(("pickle", DEFAULT_QUEUE, pickled))
    out.append(
        ("protocol 1 junk", DEFAULT_QUEUE, {"body": {"task": ["x"], "id": 1}, "headers": {}})
    )
    return out


def _publish(broker_url: str, queue: str, message: dict[str, Any]) -> None:
    body = message["body"]
    with Connection(broker_url) as conn:
        producer = conn.Producer()
        options: dict[str, Any] = {
            "headers": message["headers"],
            "exchange": "",
            "routing_key": queue,
        }
        if isinstance(body, bytes):
            options.update(content_type=message["content_type"], content_encoding="binary")
        else:
            options.update(serializer="json")
        producer.publish(body, **options)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    # A broker of the test's own: the suite's in-process worker must not take these.
    if request.param == "redis":
        with PrivateRedis(tmp_path) as server:
            yield server.url()
    else:
        with private_rabbitmq_vhost() as url:
            yield url


def test_no_hostile_message_stops_a_worker_and_every_queue_drains(
    db: Engine, test_env: dict[str, str], broker_url: str, tmp_path: Path
) -> None:
    ws = insert_workspace(db, status="online")
    env = process_env(test_env, CELERY_BROKER_URL=broker_url)
    with managed_process(
        celery_worker_argv(), env=env, ready=WORKER_READY, log_dir=tmp_path, name="worker"
    ) as worker:
        messages = hostile_messages()
        for _, queue, message in messages:
            _publish(broker_url, queue, message)
        worker.wait_for_log(
            r"message refused \(|heartbeat rejected", count=len(messages), timeout=60
        )
        # Still alive, and still working: a valid heartbeat applies after all of them.
        body, headers, _ = celery_message(
            HEARTBEAT_TASK, _heartbeat(ws, active_tasks=7), origin="t"
        )
        _publish(broker_url, HEARTBEAT_QUEUE, {"body": body, "headers": headers})
        wait_until(lambda: workspace(db, ws).active_tasks == 7, timeout=60)
        wait_until(lambda: queues_drained(broker_url), timeout=60)
        assert worker.alive
        log = worker.log()
    assert "Unrecoverable error" not in log
    assert "Traceback" not in log


# ---------------------------------------------------------------------------
# The screen itself (pure logic)


class _Message(SimpleNamespace):
    acknowledged = False

    def decode(self) -> Any:
        return json.loads(self.body)


def _message(body: Any, **header_changes: Any) -> _Message:
    _, headers, _ = celery_message(HEARTBEAT_TASK, {}, origin="t")
    headers.update(header_changes)
    return _Message(
        headers=headers, properties={}, content_type="application/json", body=json.dumps(body)
    )


class _Task:
    def run(self, payload: Any) -> None: ...


TASKS = {HEARTBEAT_TASK: _Task()}


def test_a_well_formed_message_passes_the_screen() -> None:
    assert screen(_message([[{"workspace_id": "x"}], {}, {}]), TASKS) is None
    assert screen(_message([[], {"payload": {}}, {}]), TASKS) is None


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        ([[{}], {}, {}], {"id": ["x"]}, "bad_headers"),
        ([[{}], {}, {}], {"argsrepr": ["x"]}, "bad_headers"),
        ([[{}], {}, {}], {"retries": True}, "bad_headers"),
        ([[{}], {}, {}], {"timelimit": [1]}, "bad_headers"),
        ([[{}], {}, {}], {"expires": ""}, "bad_headers"),  # found by the fuzzing campaign
        ([[{}], {}, {}], {"eta": "soon"}, "bad_headers"),
        ([[{}], {}, {}], {"task": "registry.nope"}, "unknown_task"),
        ([], {}, "bad_body"),
        ([[{}], {}], {}, "bad_body"),
        ([[{}, {}], {}, {}], {}, "bad_arguments"),
        ([[], {"other": 1}, {}], {}, "bad_arguments"),
        ([[_nested(MAX_BODY_DEPTH)], {}, {}], {}, "too_deep"),
    ],
)
def test_a_malformed_message_is_refused_by_reason(body: Any, headers: Any, reason: str) -> None:
    refusal = screen(_message(body, **headers), TASKS)
    assert refusal is not None
    assert refusal.reason == reason


def test_a_message_of_another_content_type_or_unreadable_is_refused() -> None:
    message = _message([[{}], {}, {}])
    message.content_type = "application/x-python-serialize"
    assert screen(message, TASKS).reason == "bad_content_type"  # type: ignore[union-attr]
    message = _message([[{}], {}, {}])
    message.body = "{oops"
    assert screen(message, TASKS).reason == "undecodable"  # type: ignore[union-attr]
    message = _message([[{}], {}, {}])
    message.headers = ["not", "a", "dict"]
    assert screen(message, TASKS).reason == "bad_headers"  # type: ignore[union-attr]


def test_the_depth_bound_walks_iteratively() -> None:
    assert body_bound_error(_nested(MAX_BODY_DEPTH - 1)) is None
    assert body_bound_error(_nested(100_000)) is not None  # no RecursionError


def test_only_plain_names_are_quoted_in_log_lines() -> None:
    assert printable("registry.heartbeat") == "registry.heartbeat"
    assert printable(str(uuid.UUID(int=1))) == str(uuid.UUID(int=1))
    assert printable("evil\nINFO forged line") == "?"
    assert printable(["a"]) == "?"
    assert printable("x" * 500) == "?"
