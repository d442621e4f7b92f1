"""Shared by the tests of the explicit-signal sweeps (provisioning, hibernation, orphans).

Rows are written with plain SQL; time is moved by writing timestamps into the past
through the database (`now() - interval`), never by sleeping.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Engine, Row, text

T = TypeVar("T")


def add_workspace(
    engine: Engine,
    *,
    status: str = "online",
    runtime: str = "langgraph",
    ws_id: UUID | None = None,
    name: str | None = None,
    tier: int = 1,
    url: str | None = None,
    hibernation_idle_minutes: int | None = None,
    idle_for: str | None = None,
    active_tasks: int = 0,
    in_status_for: str | None = None,
    parent_id: UUID | None = None,
) -> UUID:
    """Insert a row; `idle_for` / `in_status_for` are SQL intervals ('6 minutes')."""
    ws = ws_id or uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO workspaces (id, name, status, runtime, tier, url,
                                        hibernation_idle_minutes, active_tasks, parent_id,
                                        idle_since, status_changed_at)
                VALUES (:id, :name, :status, :runtime, :tier, :url, :hib, :active, :parent,
                        CASE WHEN CAST(:idle AS text) IS NULL THEN NULL
                             ELSE now() - CAST(:idle AS interval) END,
                        now() - CAST(COALESCE(:in_status, '0 seconds') AS interval))
                """
            ),
            {
                "id": ws,
                "name": name or f"ws-{ws.hex[:6]}",
                "status": status,
                "runtime": runtime,
                "tier": tier,
                "url": url,
                "hib": hibernation_idle_minutes,
                "active": active_tasks,
                "parent": parent_id,
                "idle": idle_for,
                "in_status": in_status_for,
            },
        )
    return ws


def set_past(engine: Engine, ws: UUID, column: str, interval: str) -> None:
    """`column = now() - interval` (column is a constant chosen by the test)."""
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE workspaces SET {column} = now() - CAST(:i AS interval) WHERE id = :id"),
            {"i": interval, "id": ws},
        )


def workspace(engine: Engine, ws: UUID) -> Row[Any]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM workspaces WHERE id = :id"), {"id": ws}).one()


def status_of(engine: Engine, ws: UUID) -> str:
    return workspace(engine, ws).status


def events(engine: Engine, event_type: str | None = None) -> list[Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT event_type, workspace_id, payload FROM structure_events "
                    "WHERE CAST(:t AS text) IS NULL OR event_type = :t ORDER BY id"
                ),
                {"t": event_type},
            )
        )


def run_concurrently(count: int, func: Callable[[], T]) -> list[T]:
    """Run `func` in `count` threads released together; results, or the first error."""
    barrier = threading.Barrier(count)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            value = func()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables and reload the settings; both restored afterwards."""
    from registry.config import reload_settings

    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    reload_settings()
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        reload_settings()
