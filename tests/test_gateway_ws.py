"""The gateway's WebSocket `/ws` (CONTRACT §11) against real processes: a uvicorn
server, PostgreSQL, Redis, a WebSocket client, and events recorded and published by
the registry's own unit of work."""

from __future__ import annotations

import pytest
from board_helpers import make_workspace, publish
from gateway_ws_helpers import frames, gateway, numbers, open_ws, quiet, token_for

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
    keys = {"event", "workspace_id", "timestamp", "payload", "event_id", "position"}
    assert all(set(f) == keys for f in got)
    assert [f["event_id"] for f in got] == [1, 2, 3, 4, 5, 6]
    assert got[5]["event"] == "WORKSPACE_OFFLINE"
    assert got[5]["payload"]["status"] == "offline"
    assert len({f["position"] for f in got}) == 6


def family(db) -> dict[str, str]:
    """Two roots; r1 has children a1 and a2, a1 has a11; r2 has b1."""
    ids: dict[str, str] = {}
    ids["r1"] = make_workspace(db, "r1")
    ids["r2"] = make_workspace(db, "r2")
    ids["a1"] = make_workspace(db, "a1", parent_id=ids["r1"])
    ids["a2"] = make_workspace(db, "a2", parent_id=ids["r1"])
    ids["a11"] = make_workspace(db, "a11", parent_id=ids["a1"])
    ids["b1"] = make_workspace(db, "b1", parent_id=ids["r2"])
    return ids


def test_agents_receive_only_events_of_workspaces_they_may_talk_to(server, db, redis_client):
    ids = family(db)
    names = {v: k for k, v in ids.items()}
    order = ["r1", "r2", "a1", "a2", "a11", "b1"]
    with (
        open_ws(server) as canvas,
        open_ws(server, workspace=ids["a1"], token=token_for(db, ids["a1"])) as a1,
        open_ws(server, workspace=ids["b1"], token=token_for(db, ids["b1"])) as b1,
    ):
        publish(db, redis_client, [card(ids[name], n) for n, name in enumerate(order)])
        seen_canvas = frames(canvas, 6)
        seen_a1 = frames(a1, 4)
        seen_b1 = frames(b1, 2)
        assert quiet(a1, 1.0) == [] and quiet(b1, 0.2) == []
    assert [names[f["workspace_id"]] for f in seen_canvas] == order
    # a1: itself, its parent, its sibling, its child; not the other root nor its child.
    assert [names[f["workspace_id"]] for f in seen_a1] == ["r1", "a1", "a2", "a11"]
    assert [names[f["workspace_id"]] for f in seen_b1] == ["r2", "b1"]
    # The same frames (and positions) as the canvas's.
    by_position = {f["position"]: f for f in seen_canvas}
    assert all(by_position[f["position"]] == f for f in seen_a1 + seen_b1)


def test_an_agent_sees_a_new_peer_at_once_not_after_its_peers_refresh(server, db, redis_client):
    parent = make_workspace(db, "parent")
    elsewhere = make_workspace(db, "elsewhere", parent_id=make_workspace(db, "root-2"))
    with open_ws(server, workspace=parent, token=token_for(db, parent)) as agent:
        child = make_workspace(db, "new-child", parent_id=parent)
        stranger = make_workspace(db, "new-stranger", parent_id=elsewhere)
        # In one go: the second event of the child is fanned out before the agent's
        # check of the first has answered.
        publish(
            db,
            redis_client,
            [card(stranger, 0), card(child, 1), card(child, 2)],
            per_transaction=3,
        )
        got = frames(agent, 2, timeout=5)  # well before the peers' 30 s refresh
        assert quiet(agent, 0.5) == []
    assert [(f["workspace_id"], f["payload"]["n"]) for f in got] == [(child, 1), (child, 2)]
