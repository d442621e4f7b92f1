"""Shared by the fleet-insight tests (CONTRACT §13): rows, heartbeats, time moved back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ingest_helpers import insert_workspace
from sqlalchemy import Engine, text


def clean_insight(engine: Engine) -> Iterator[Engine]:
    """Body of an `insight_db` fixture: conftest's `db` does not know these tables."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE incidents, incident_signals"))
    yield engine


def fleet(
    engine: Engine, count: int, *, status: str = "online", parent: str | None = None
) -> list[str]:
    ids = [insert_workspace(engine, status=status) for _ in range(count)]
    if parent is not None:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE workspaces SET parent_id = :p WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"p": parent, "ids": ids},
            )
    return ids


def failing(ws: str, error: str) -> dict[str, Any]:
    return {"workspace_id": ws, "error_rate": 0.9, "sample_error": error}


def healthy(ws: str) -> dict[str, Any]:
    return {"workspace_id": ws, "error_rate": 0.0}


def incidents(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM incidents ORDER BY id")).all()


def incident_events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT payload FROM structure_events WHERE event_type = 'REGISTRY_INCIDENT' "
                "ORDER BY id"
            )
        ).all()
    return [r.payload for r in rows]


def events_of(engine: Engine, event_type: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT workspace_id::text AS ws, payload, id FROM structure_events "
                "WHERE event_type = :t ORDER BY id"
            ),
            {"t": event_type},
        ).all()


def age(engine: Engine, sql: str, **params: Any) -> None:
    """Move time: an UPDATE writing timestamps into the past."""
    with engine.begin() as conn:
        conn.execute(text(sql), params)
