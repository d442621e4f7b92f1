"""Shared helpers for the ingestion tests (registrations, heartbeats, cards, lifecycle).

- domain shortcuts that run one unit of work, as a task would (`register_now`, ...);
- full snapshots of the registry's PostgreSQL tables and Redis data database, to
  prove a refused message changed nothing;
- an `EventTap` on the `events:broadcast` channel and readers of `events:stream`;
- `TaskRecorder`: every task run seen through Celery's signals (in this process: the
  in-process `worker` fixture and `.apply()`), to prove a message ran once and was
  never retried; `run_message` sends one message and waits for its run.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import redis
from celery import Celery
from celery.signals import task_postrun, task_retry
from sqlalchemy import Engine, text

from molecule_registry_client.names import queue_for
from registry.events.outbox import BROADCAST_CHANNEL, EVENT_STREAM
from registry.ingestion.heartbeats import apply_heartbeats
from registry.ingestion.lifecycle import create_workspace, remove_workspace
from registry.ingestion.payloads import (
    CreateWorkspacePayload,
    HeartbeatPayload,
    RegisterPayload,
    RemoveWorkspacePayload,
    UpdateCardPayload,
    parse_payload,
)
from registry.ingestion.registration import register, update_card
from registry.ingestion.urlguard import Resolver
from registry.outcomes import MessageRefused
from registry.uow import unit_of_work

REGISTRY_TABLES = ("workspaces", "workspace_auth_tokens", "structure_events", "event_outbox")
PUBLIC_IP = "93.184.216.34"  # a public address: passes the URL guard without a lookup


def new_id() -> str:
    return str(uuid.uuid4())


def wait_until(check: Callable[[], Any], *, timeout: float = 15, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)


def names_field(error: str, field: str) -> bool:
    """Whether a rejection names `field` ("field: ..." or a sub-path "field.key: ...")."""
    return re.match(rf"(.*; )?{re.escape(field)}[:. ]", error) is not None


# ---------------------------------------------------------------------------
# Domain shortcuts: one unit of work each, exactly what the task bodies run.


def outcome(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The result object a task would answer for `call` (refusals included)."""
    try:
        return call()
    except MessageRefused as refused:  # bad input (PayloadError) included
        return refused.as_result()


def register_now(
    ws: str | UUID,
    *,
    card: dict[str, Any] | None = None,
    url: str = "",
    delivery_mode: str = "poll",
    auth_token: str | None = None,
    task_id: str | None = None,
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": str(ws),
        "agent_card": card if card is not None else {"name": "agent"},
        "url": url,
        "delivery_mode": delivery_mode,
    }
    if auth_token is not None:
        raw["auth_token"] = auth_token
    payload = parse_payload(RegisterPayload, raw)
    with unit_of_work() as uow:
        return register(uow, payload, task_id=task_id, resolver=resolver)


def heartbeat_now(ws: str | UUID, token: str | None = None, **fields: Any) -> dict[str, Any]:
    raw = {"workspace_id": str(ws), **fields}
    if token is not None:
        raw["auth_token"] = token
    payload = parse_payload(HeartbeatPayload, raw)
    with unit_of_work() as uow:
        (result,) = apply_heartbeats(uow, [payload])
    return result


def create_now(name: str = "ws", task_id: str | None = None, **fields: Any) -> dict[str, Any]:
    payload = parse_payload(CreateWorkspacePayload, {"name": name, **fields})
    with unit_of_work() as uow:
        return create_workspace(uow, payload, task_id=task_id)


def update_card_now(ws: str | UUID, card: dict[str, Any], token: str | None) -> dict[str, Any]:
    raw: dict[str, Any] = {"workspace_id": str(ws), "agent_card": card}
    if token is not None:
        raw["auth_token"] = token
    payload = parse_payload(UpdateCardPayload, raw)
    with unit_of_work() as uow:
        return update_card(uow, payload)


def remove_now(ws: str | UUID) -> dict[str, Any]:
    payload = parse_payload(RemoveWorkspacePayload, {"workspace_id": str(ws)})
    with unit_of_work() as uow:
        return remove_workspace(uow, payload)


def insert_workspace(
    engine: Engine,
    *,
    status: str = "online",
    runtime: str = "langgraph",
    delivery_mode: str | None = None,
    url: str | None = None,
) -> str:
    """A row as another service (the provisioner) would write it: no token, never registered."""
    ws = new_id()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, runtime, delivery_mode, url) "
                "VALUES (:id, :id, :status, :runtime, :mode, :url)"
            ),
            {"id": ws, "status": status, "runtime": runtime, "mode": delivery_mode, "url": url},
        )
    return ws


def set_status(engine: Engine, ws: str | UUID, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET status = :s WHERE id = :id"), {"s": status, "id": str(ws)}
        )


def workspace(engine: Engine, ws: str | UUID) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM workspaces WHERE id = :id"), {"id": str(ws)}).one()


def tokens_of(engine: Engine, ws: str | UUID) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT * FROM workspace_auth_tokens WHERE workspace_id = :id ORDER BY created_at"
            ),
            {"id": str(ws)},
        ).all()


def recorded_events(engine: Engine, ws: str | UUID | None = None) -> list[tuple[str, dict]]:
    """(event_type, payload) from structure_events, oldest first."""
    where, params = ("WHERE workspace_id = :id", {"id": str(ws)}) if ws else ("", {})
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT event_type, payload FROM structure_events {where} ORDER BY id"), params
        ).all()
    return [(r.event_type, r.payload) for r in rows]


def lock_waiters(engine: Engine) -> int:
    """Sessions of this test database waiting for a lock (e.g. a row another one holds)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()


def outbox_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM event_outbox")).scalar_one()


# ---------------------------------------------------------------------------
# Snapshots: "nothing changed" means every row and every key is identical.


def db_snapshot(engine: Engine) -> dict[str, list[str]]:
    """Every row of every registry table, as PostgreSQL's row text, in a stable order."""
    with engine.connect() as conn:
        return {
            table: list(conn.execute(text(f"SELECT t::text FROM {table} t ORDER BY 1")).scalars())
            for table in REGISTRY_TABLES
        }


def redis_snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key of the Redis data database with its value (streams by length and last id)."""
    snapshot: dict[str, Any] = {}
    for key in sorted(client.scan_iter()):
        kind = client.type(key)
        if kind == "string":
            snapshot[key] = client.get(key)
        elif kind == "stream":
            last = client.xrevrange(key, count=1)
            snapshot[key] = (client.xlen(key), last[0][0] if last else None)
        elif kind == "hash":
            snapshot[key] = client.hgetall(key)
        else:
            snapshot[key] = kind
    return snapshot


# ---------------------------------------------------------------------------
# Events as subscribers see them.


def stream_events(client: redis.Redis) -> list[dict[str, Any]]:
    entries = client.xrange(EVENT_STREAM)
    for _, fields in entries:
        assert set(fields) == {"data"}, fields  # CONTRACT §7: one field, `data`
    return [json.loads(fields["data"]) for _, fields in entries]


def assert_event_shape(event: dict[str, Any], *, recorded: bool) -> None:
    """CONTRACT §7: {"event", "workspace_id", "timestamp" (RFC 3339 UTC), "payload"}."""
    expected = {"event", "workspace_id", "timestamp", "payload"}
    assert expected <= set(event), event
    assert set(event) - expected == ({"event_id"} if recorded else set()), event
    assert event["timestamp"].endswith("Z"), event["timestamp"]
    stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 3600
    assert isinstance(event["payload"], dict)


class EventTap:
    """A live subscriber of `events:broadcast`, subscribed before anything is sent.

    Pub/sub channels are server-wide, not per Redis database: other test runs on this
    Redis publish on the same channel, so the tap keeps only events about `workspaces`.
    """

    def __init__(self, client: redis.Redis, workspaces: Collection[str | UUID]) -> None:
        self._wanted = {str(ws) for ws in workspaces}
        self._pubsub = client.pubsub()
        self._pubsub.subscribe(BROADCAST_CHANNEL)
        confirmation = self._pubsub.get_message(timeout=5)
        assert confirmation and confirmation["type"] == "subscribe", confirmation
        self.events: list[dict[str, Any]] = []

    def drain(self, quiet: float = 0.3, *, at_most: float = 3) -> list[dict[str, Any]]:
        """Collect until `quiet` s pass without a message (other runs' traffic counts, so
        give up after `at_most` s); returns everything kept so far."""
        deadline = time.monotonic() + at_most
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=quiet)
            if message is None:
                break
            self._keep(message)
        return self.events

    def _keep(self, message: dict[str, Any] | None) -> None:
        if message and message["type"] == "message":
            event = json.loads(message["data"])
            if event.get("workspace_id") in self._wanted:
                self.events.append(event)

    def wait_for(self, count: int, *, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            self._keep(self._pubsub.get_message(timeout=0.2))
        assert len(self.events) >= count, self.events
        return self.events

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event_type]

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> EventTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Task runs, seen through Celery's signals.


@dataclass
class TaskRun:
    task_id: str
    name: str
    state: str
    retval: Any


@dataclass
class TaskRecorder:
    runs: list[TaskRun] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_postrun(self, task_id: str, task: Any, retval: Any, state: str, **_: Any) -> None:
        with self._lock:
            self.runs.append(TaskRun(task_id, task.name, state, retval))

    def on_retry(self, request: Any, **_: Any) -> None:
        with self._lock:
            self.retries.append(request.id)

    def runs_of(self, task_id: str) -> list[TaskRun]:
        with self._lock:
            return [run for run in self.runs if run.task_id == task_id]

    def wait(self, task_id: str, *, timeout: float = 15) -> TaskRun:
        runs = wait_until(lambda: self.runs_of(task_id), timeout=timeout)
        return runs[0]

    def assert_ran_once(self, task_id: str) -> TaskRun:
        """One run, successful, never retried.

        A retry would have ended the first run in state RETRY (autoretry raises Retry
        from it), so a first run in SUCCESS with no retry signal is proof enough.
        """
        run = self.wait(task_id)
        runs = self.runs_of(task_id)
        assert [r.state for r in runs] == ["SUCCESS"], runs
        assert task_id not in self.retries
        return run


RECORDER = TaskRecorder()
task_postrun.connect(RECORDER.on_postrun, weak=False)
task_retry.connect(RECORDER.on_retry, weak=False)


def task_named(app: Celery, name: str) -> Any:
    """The registered task `name`, loading the task modules as a worker does at start."""
    app.loader.import_default_modules()
    return app.tasks[name]


def send(app: Celery, name: str, payload: Any, **options: Any) -> str:
    """Send a message by task name to its queue, as a foreign producer would; the task id."""
    return app.send_task(name, args=[payload], queue=queue_for(name), **options).id


def run_message(app: Celery, name: str, payload: Any) -> Any:
    """Send one message to the worker and return its task's result (heartbeats included)."""
    return RECORDER.assert_ran_once(send(app, name, payload)).retval


def run_sweep(app: Celery, name: str) -> Any:
    """Send a periodic task (no arguments) by name, as beat would; its result."""
    task_id = app.send_task(name, queue=queue_for(name)).id
    return RECORDER.assert_ran_once(task_id).retval


def iter_text_columns(engine: Engine) -> Iterator[tuple[str, str]]:
    """(table, column) for every text-like or JSON column of the public schema."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' "
                "AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea')"
            )
        ).all()
    yield from ((r.table_name, r.column_name) for r in rows)
