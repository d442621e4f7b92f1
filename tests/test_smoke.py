"""Smoke: one registration and one heartbeat through a real worker and broker."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.integration


def test_register_then_heartbeat(db, worker, celery_app, redis_client):
    ws = str(uuid.uuid4())
    result = celery_app.send_task(
        "registry.register",
        args=[{"id": ws, "agent_card": {"name": "a"}, "delivery_mode": "poll"}],
        queue="registry",
    ).get(timeout=20)
    assert result["status"] == "registered", result
    assert result["auth_token"]
    hb = celery_app.send_task(
        "registry.heartbeat",
        args=[{"workspace_id": ws, "auth_token": result["auth_token"], "error_rate": 0.9}],
        queue="registry.heartbeats",
    )
    assert hb.id
    import time

    deadline = time.time() + 15
    while time.time() < deadline:
        with db.connect() as conn:
            from sqlalchemy import text

            status = conn.execute(
                text("SELECT status FROM workspaces WHERE id = :id"), {"id": ws}
            ).scalar()
        if status == "degraded":
            break
        time.sleep(0.1)
    assert status == "degraded"
    assert redis_client.ttl(f"ws:{ws}") > 0
