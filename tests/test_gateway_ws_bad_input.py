"""Bad input at the gateway's WebSocket `/ws` (CONTRACT §11), refused at the handshake
by a real uvicorn server: forged workspace ids, foreign origins, a missing canvas
token, `since` values that are not positions or lie before the kept history."""

from __future__ import annotations

import pytest
from board_helpers import make_workspace, publish
from gateway_ws_helpers import (
    frames,
    gateway,
    open_ws,
    quiet,
    refused_status,
    token_for,
    until_closed,
)
from sqlalchemy import text

from registry.statuses import EventType

pytestmark = pytest.mark.integration


@pytest.fixture
def server(db):
    with gateway() as running:
        yield running


def test_a_forged_workspace_id_is_refused(server, db):
    mine = make_workspace(db, "mine")
    other = make_workspace(db, "other")
    other_token = token_for(db, other)
    token_for(db, mine)
    for token in (other_token, None, "not-a-token", other_token[:-1] + "x"):
        status, body = refused_status(server, workspace=mine, token=token)
        assert status == 401, token
        assert body == {"error": "missing or invalid token for this workspace"}
    # A workspace with no token at all has no bootstrap here: anyone could name it.
    tokenless = make_workspace(db, "tokenless")
    assert refused_status(server, workspace=tokenless)[0] == 401
    # Unknown, removed, not an id.
    unknown = "0f3c2a9b-1d2e-4c5f-8a9b-0c1d2e3f4a5b"
    assert refused_status(server, workspace=unknown, token=other_token)[0] == 401
    gone = make_workspace(db, "gone", status="removed")
    assert refused_status(server, workspace=gone, token=token_for(db, gone))[0] == 401
    assert refused_status(server, workspace="../etc", token=other_token)[0] == 400
    # The right token opens the connection.
    with open_ws(server, workspace=other, token=other_token):
        pass


def test_removing_the_workspace_closes_its_agent_connection(server, db, redis_client):
    team = make_workspace(db, "team")  # siblings under one parent (two roots may not talk)
    ws_id = make_workspace(db, "doomed", parent_id=team)
    peer = make_workspace(db, "peer", parent_id=team)
    with (
        open_ws(server, workspace=ws_id, token=token_for(db, ws_id)) as agent,
        open_ws(server, workspace=peer, token=token_for(db, peer)) as other,
    ):
        # What registry.remove_workspace does: removed, tokens revoked, event recorded.
        with db.begin() as conn:
            conn.execute(
                text("UPDATE workspaces SET status = 'removed' WHERE id = :w"), {"w": ws_id}
            )
            conn.execute(
                text("UPDATE workspace_auth_tokens SET revoked_at = now() WHERE workspace_id = :w"),
                {"w": ws_id},
            )
        publish(
            db, redis_client, [(EventType.WORKSPACE_REMOVED, ws_id, {"previous_status": "online"})]
        )
        got, code, reason = until_closed(agent, timeout=15)
        (removal,) = frames(other, 1)  # its peer is told, and sees it no more
        publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws_id, {"agent_card": {}})])
        assert quiet(other, 1.0) == []
    assert (code, reason) == (4403, "workspace removed or token revoked")
    assert [f["event"] for f in got] == ["WORKSPACE_REMOVED"]
    assert removal["payload"] == {"previous_status": "online", "status": "removed"}


def test_a_canvas_from_a_foreign_origin_is_refused(server, db):
    status, body = refused_status(server, origin="http://evil.example")
    assert (status, body) == (403, {"error": "origin not allowed"})
    for origin in (None, "http://localhost:3000", f"http://127.0.0.1:{server.port}"):
        with open_ws(server, origin=origin):
            pass


def test_configured_origins_replace_the_defaults(db):
    with gateway(GATEWAY_ALLOWED_ORIGINS="https://canvas.example, https://ops.example") as server:
        assert refused_status(server, origin="http://localhost:3000")[0] == 403
        assert refused_status(server, origin=f"http://127.0.0.1:{server.port}")[0] == 403
        for origin in ("https://canvas.example", "https://ops.example"):
            with open_ws(server, origin=origin):
                pass


def test_a_canvas_needs_the_operator_token_when_one_is_configured(db):
    secret = "operator-canvas-secret-4f1d"
    with gateway(GATEWAY_CANVAS_TOKEN=secret) as server:
        status, body = refused_status(server)
        assert (status, body) == (401, {"error": "canvas token missing or not valid"})
        assert refused_status(server, token="wrong")[0] == 401
        assert refused_status(server, origin="http://evil.example", token=secret)[0] == 403
        with open_ws(server, token=secret):
            pass
    assert secret not in server.log.read_text()


def test_since_that_is_not_a_position_is_refused_with_400(server, db):
    for since in ("yesterday", "now", "12-x", "1-0:abc", "1-0:5:run-id!"):
        status, body = refused_status(server, since=since)
        assert (status, body) == (400, {"error": "since: not a position"}), since


def test_since_older_than_the_kept_history_gets_stream_too_old_and_4410(server, db, redis_client):
    ws_id = make_workspace(db, "old")
    publish(db, redis_client, [(EventType.AGENT_CARD_UPDATED, ws_id, {"agent_card": {}})] * 3)
    with db.begin() as conn:  # the first lies before the 90-day retention window
        conn.execute(
            text(
                "UPDATE structure_events SET created_at = now() - interval '100 days' WHERE id = 1"
            )
        )
        oldest = conn.execute(text("SELECT min(created_at) FROM structure_events")).scalar()
    # A position from a Redis long gone, after event 1: its gap reaches before the window.
    with open_ws(server, since="1700000000000-0:1:0123abcd") as late:
        got, code, reason = until_closed(late)
    assert code == 4410
    assert "older than the kept history" in reason
    assert len(got) == 1
    assert got[0]["event"] == "STREAM_TOO_OLD"
    assert got[0]["workspace_id"] is None
    assert got[0]["timestamp"].endswith("Z")
    assert got[0]["payload"]["oldest"].startswith(oldest.strftime("%Y-%m-%dT%H:%M"))
    # A position within the window replays the rest.
    with open_ws(server, since="1700000000000-0:2:0123abcd") as recent:
        assert [f["event"] for f in frames(recent, 1)] == ["AGENT_CARD_UPDATED"]
