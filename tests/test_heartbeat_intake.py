"""The heartbeat task's own strategy (workers/heartbeat_intake.py), through a real worker.

A per-message heartbeat is validated in the consumer and applied by group commit; what
Celery's default path did for it must still hold: the argument may come positionally or
by keyword, a wrong call is refused without changing anything, an expired or revoked
message is discarded, and every outcome reaches the task signal and the metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from ingest_helpers import RECORDER, new_id, queue_for, register_now, workspace
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from molecule_registry_client.names import HEARTBEAT_TASK
from workers.heartbeat_intake import heartbeat_payload

PAYLOAD = {"workspace_id": "w", "auth_token": "t"}


class _Message(SimpleNamespace):
    def decode(self) -> Any:
        return self.body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([[PAYLOAD], {}, {}], PAYLOAD),  # protocol 2, positional
        ([[], {"payload": PAYLOAD}, {}], PAYLOAD),  # protocol 2, by keyword
        ([[PAYLOAD, PAYLOAD], {}, {}], None),  # two arguments
        ([[], {}, {}], None),  # none
        ([[], {"other": 1}, {}], None),  # an unknown keyword
        ({"not": "a list"}, None),
    ],
)
def test_the_one_argument_is_found_in_a_protocol_2_body(body: Any, expected: Any) -> None:
    assert heartbeat_payload(_Message(body=body), None) == expected


def test_the_one_argument_is_found_in_a_protocol_1_body() -> None:
    proto1 = {"task": HEARTBEAT_TASK, "id": "x", "args": [PAYLOAD], "kwargs": {}}
    assert heartbeat_payload(_Message(body=None), proto1) == PAYLOAD


def _send(app: Celery, *args: Any, **options: Any) -> str:
    return app.send_task(HEARTBEAT_TASK, queue=queue_for(HEARTBEAT_TASK), **options, args=args).id


def _results(status: str) -> float:
    labels = {"task": HEARTBEAT_TASK, "status": status}
    return REGISTRY.get_sample_value("registry_task_results_total", labels) or 0.0


def test_a_heartbeat_by_keyword_is_applied(db: Engine, worker: Any, celery_app: Celery) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    before = _results("ok")
    payload = {"workspace_id": ws, "auth_token": token, "current_task": "by keyword"}
    task_id = celery_app.send_task(
        HEARTBEAT_TASK, kwargs={"payload": payload}, queue=queue_for(HEARTBEAT_TASK)
    ).id
    assert RECORDER.assert_ran_once(task_id).retval == {
        "status": "ok",
        "workspace_status": "online",
    }
    assert workspace(db, ws).current_task == "by keyword"
    assert _results("ok") == before + 1


def test_a_wrong_call_is_refused_and_changes_nothing(
    db: Engine, worker: Any, celery_app: Celery
) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    before = workspace(db, ws)
    payload = {"workspace_id": ws, "auth_token": token, "current_task": "twice"}
    result = RECORDER.assert_ran_once(_send(celery_app, payload, payload)).retval
    assert result["status"] == "rejected"
    assert "payload" in result["error"]
    assert workspace(db, ws) == before


def test_an_expired_heartbeat_is_discarded(db: Engine, worker: Any, celery_app: Celery) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    late = {"workspace_id": ws, "auth_token": token, "current_task": "expired"}
    expired_id = _send(celery_app, late, expires=datetime.now(UTC) - timedelta(seconds=5))
    # The queue is read in order: once the next heartbeat ran, the expired one was seen.
    follow = {"workspace_id": ws, "auth_token": token}
    RECORDER.assert_ran_once(_send(celery_app, follow))
    assert RECORDER.runs_of(expired_id) == []
    assert workspace(db, ws).current_task is None
