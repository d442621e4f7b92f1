"""The gateway's WebSocket `/ws` (CONTRACT §11) against real processes: a uvicorn
server, PostgreSQL, Redis, a WebSocket client, and events recorded and published by
the registry's own unit of work."""

from __future__ import annotations

import pytest
from board_helpers import make_workspace, publish
from gateway_ws_helpers import frames, gateway, numbers, open_ws

from registry.statuses import EventType

pytestmark = pytest.mark.integration


@pytest.fixture
def server(db):
    with gateway() as running:
        yield running


def card(workspace: str, n: int) -> tuple[EventType, str, dict[str, object]]:
    return (EventType.AGENT_CARD_UPDATED, workspace, {"n": n, "agent_card": {}})


def test_canvas_receives_every_recorded_event_with_its_position(server, db, redis_client):
    ws_a = make_workspace(db, "a")
    with open_ws(server) as canvas:
        publish(db, redis_client, [card(ws_a, n) for n in range(5)])
        publish(
            db,
            redis_client,
            [
                (
                    EventType.WORKSPACE_OFFLINE,
                    ws_a,
                    {"reason": "liveness_expired", "previous_status": "online"},
                )
            ],
        )
        got = frames(canvas, 6)
    assert numbers(got[:5]) == [0, 1, 2, 3, 4]
    assert all(set(f) == {"event", "workspace_id", "timestamp", "payload", "position"} for f in got)
    assert got[5]["event"] == "WORKSPACE_OFFLINE"
    assert got[5]["payload"]["status"] == "offline"
    assert len({f["position"] for f in got}) == 6
