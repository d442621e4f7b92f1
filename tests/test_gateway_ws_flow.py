"""Flow at the gateway's WebSocket `/ws` (CONTRACT §11): a client too slow to keep up is
closed with a code and reason that say so and resumes with nothing lost; broadcast-only
events reach canvases at most once per workspace per second; idle connections stay."""

from __future__ import annotations

import time

import pytest
from board_helpers import make_workspace, publish
from gateway_ws_helpers import frames, gateway, numbers, open_ws, quiet, until_closed
from websockets.exceptions import ConnectionClosed

from registry.statuses import EventType

pytestmark = pytest.mark.integration

BIG = "x" * 20_000  # big frames fill the socket buffers quickly


def test_a_slow_client_is_closed_and_resumes_with_nothing_lost(db, redis_client):
    ws_id = make_workspace(db, "chatty")
    total = 600
    specs = [
        (EventType.AGENT_CARD_UPDATED, ws_id, {"n": n, "agent_card": {"blob": BIG}})
        for n in range(total)
    ]
    with gateway(GATEWAY_WS_QUEUE_FRAMES="20") as server:
        # max_queue=4: the client stops reading from the network soon, while not receiving.
        with open_ws(server, max_queue=4) as slow:
            publish(db, redis_client, specs, per_transaction=50)
            got, code, reason = until_closed(slow, timeout=60)
        assert code == 4008
        assert reason.startswith("too slow: more than 20 frames behind")
        assert 0 < len(got) < total
        assert numbers(got) == list(range(len(got)))
        # Resuming from the last frame received loses nothing. While the backlog is
        # still being fanned out a resumed client may be closed again: each time it
        # has made progress, and it resumes again.
        for _ in range(20):
            if len(got) == total:
                break
            with open_ws(server, since=got[-1]["position"]) as resumed:
                more, code, _ = until_closed_or_quiet(resumed, total - len(got))
            assert more, "a resumed connection made no progress"
            assert code in (None, 4008)
            got += more
        assert numbers(got) == list(range(total))


def until_closed_or_quiet(ws, expected: int) -> tuple[list[dict], int | None, str]:
    """Frames until the close (code, reason), or until `expected` came and then silence."""
    got: list[dict] = []
    while len(got) < expected:
        try:
            got += frames(ws, 1, timeout=30)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return got, exc.rcvd.code, exc.rcvd.reason
    assert quiet(ws, 0.5) == []
    return got, None, ""


def test_broadcast_only_events_reach_a_canvas_at_most_once_per_workspace_per_second(
    db, redis_client
):
    a = make_workspace(db, "a")
    b = make_workspace(db, "b")
    with gateway() as server, open_ws(server) as canvas:
        start = time.monotonic()
        for n in range(20):  # 20 heartbeats of each workspace within ~0.5 s
            publish(
                db,
                redis_client,
                [
                    (EventType.WORKSPACE_HEARTBEAT, a, {"n": n, "active_tasks": n}),
                    (
                        EventType.TASK_UPDATED,
                        b,
                        {"n": n, "current_task": f"t{n}", "active_tasks": 1},
                    ),
                ],
            )
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        # The newest of the last second is sent when that second ends.
        got = quiet(canvas, 1.5, keep=lambda f: f["workspace_id"] in (a, b))
    for workspace in (a, b):
        mine = [f for f in got if f["workspace_id"] == workspace]
        # One at once, then at most one per second (the last one held).
        assert 2 <= len(mine) <= int(elapsed) + 2, mine
        # At most one per second: the first at once, the newest when its second ends.
        assert mine[0]["payload"]["n"] == 0
        assert mine[-1]["payload"]["n"] == 19
        assert all("position" in f for f in mine)


def test_a_heartbeat_never_hides_a_task_update_held_in_the_same_second(db, redis_client):
    ws_id = make_workspace(db, "busy")
    mine = lambda f: f["workspace_id"] == ws_id  # noqa: E731
    with gateway() as server, open_ws(server) as canvas:
        beat = (EventType.WORKSPACE_HEARTBEAT, ws_id, {"active_tasks": 1, "uptime_seconds": 1})
        publish(db, redis_client, [beat])  # opens the workspace's second
        task = (EventType.TASK_UPDATED, ws_id, {"current_task": "t1", "active_tasks": 1})
        publish(db, redis_client, [task, beat])  # as a heartbeat batch publishes them
        got = frames(canvas, 2, timeout=5, keep=mine)
    assert [f["event"] for f in got] == ["WORKSPACE_HEARTBEAT", "TASK_UPDATED"]


def test_an_idle_connection_stays_open(db, redis_client):
    ws_id = make_workspace(db, "idle")
    with gateway() as server, open_ws(server) as canvas:
        # The server pings every second here (uvicorn --ws-ping-interval 1); the client
        # answers; several intervals of silence later the connection still delivers.
        assert quiet(canvas, 3.5) == []
        publish(
            db, redis_client, [(EventType.WORKSPACE_ONLINE, ws_id, {"recovered_from": "offline"})]
        )
        (frame,) = frames(canvas, 1)
    assert frame["event"] == "WORKSPACE_ONLINE"
    assert frame["payload"] == {"recovered_from": "offline", "status": "online"}
