"""Resuming the gateway's WebSocket `/ws` (CONTRACT §11) with nothing lost and nothing
twice: after a disconnect while events keep coming, across a gateway restart, on
another gateway process, and across a Redis restart."""

from __future__ import annotations

import contextlib
import threading

import pytest
import redis
from board_helpers import make_workspace, private_redis, publish
from gateway_ws_helpers import (
    Gateway,
    frames,
    gateway,
    numbers,
    open_ws,
    quiet,
    token_for,
    until_closed,
)

from registry.statuses import EventType

pytestmark = pytest.mark.integration


def cards(workspace: str, start: int, stop: int) -> list[tuple[EventType, str, dict[str, object]]]:
    return [
        (EventType.AGENT_CARD_UPDATED, workspace, {"n": n, "agent_card": {}})
        for n in range(start, stop)
    ]


def test_a_resumed_canvas_replays_its_gap_then_joins_the_live_events(db, redis_client):
    ws_id = make_workspace(db, "busy")
    with gateway() as server:
        with open_ws(server) as canvas:
            publish(db, redis_client, cards(ws_id, 0, 10))
            last = frames(canvas, 10)[-1]
        publish(db, redis_client, cards(ws_id, 10, 40))  # missed while away
        # Events keep coming while the gap is replayed: the join must neither lose
        # nor repeat any of them.
        flowing = threading.Thread(
            target=lambda: [
                publish(db, redis_client, cards(ws_id, n, n + 5)) for n in range(40, 240, 5)
            ]
        )
        flowing.start()
        try:
            with open_ws(server, since=last["position"]) as resumed:
                got = frames(resumed, 230)
                flowing.join()
                got += quiet(resumed, 1.0)
        finally:
            flowing.join()
    assert numbers(got) == list(range(10, 240))


def test_canvas_and_agent_resume_across_a_gateway_restart_and_on_another_gateway(db, redis_client):
    parent = make_workspace(db, "parent")
    child = make_workspace(db, "child", parent_id=parent)
    stranger = make_workspace(db, "stranger", parent_id=make_workspace(db, "other-root"))
    token = token_for(db, child)
    server = Gateway()
    server.start()
    try:
        with open_ws(server) as canvas, open_ws(server, workspace=child, token=token) as agent:
            publish(
                db, redis_client, cards(parent, 0, 2) + cards(stranger, 2, 4) + cards(child, 4, 6)
            )
            canvas_last = frames(canvas, 6)[-1]["position"]
            agent_last = frames(agent, 4)[-1]["position"]
        server.stop(kill=True)  # a crash: no goodbye
        publish(
            db, redis_client, cards(stranger, 6, 8) + cards(child, 8, 10) + cards(parent, 10, 12)
        )
        server.start()
        with (
            open_ws(server, since=canvas_last) as canvas,
            open_ws(server, since=agent_last, workspace=child, token=token) as agent,
        ):
            assert numbers(frames(canvas, 6)) == list(range(6, 12))
            agent_frames = frames(agent, 4)
            assert numbers(agent_frames) == [8, 9, 10, 11]
            publish(db, redis_client, cards(stranger, 12, 13) + cards(child, 13, 14))
            assert numbers(frames(canvas, 2)) == [12, 13]
            assert numbers(frames(agent, 1)) == [13]
            assert quiet(canvas, 0.5) == [] and quiet(agent, 0.5) == []
        # A position is the registry's, not one process's: another gateway resumes it.
        with (
            gateway() as other,
            open_ws(
                other, since=agent_frames[-1]["position"], workspace=child, token=token
            ) as agent,
        ):
            assert numbers(frames(agent, 1)) == [13]
            assert quiet(agent, 0.5) == []
    finally:
        server.stop()


def test_connections_survive_a_redis_restart_and_miss_nothing(db):
    parent = make_workspace(db, "parent")
    child = make_workspace(db, "child", parent_id=parent)
    stranger = make_workspace(db, "stranger", parent_id=make_workspace(db, "root-2"))
    token = token_for(db, child)
    with private_redis() as redis_server, gateway(REDIS_URL=redis_server.url) as server:
        client = redis_server.client()
        with open_ws(server) as canvas, open_ws(server, workspace=child, token=token) as agent:
            publish(db, client, cards(child, 0, 2) + cards(stranger, 2, 3))
            assert numbers(frames(canvas, 3)) == [0, 1, 2]
            before = frames(agent, 2)
            assert numbers(before) == [0, 1]

            redis_server.kill()
            # Recorded while Redis is down: committed, its publication fails (the outbox
            # keeps it for the relay); the gateway must replay it from the database.
            for spec in cards(child, 3, 4) + cards(stranger, 4, 5):
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    publish(db, client, [spec])
            redis_server.start()
            client = redis_server.client()
            assert numbers(frames(canvas, 2, timeout=40)) == [3, 4]
            assert numbers(frames(agent, 1, timeout=40)) == [3]

            publish(db, client, cards(child, 5, 6))
            assert numbers(frames(canvas, 1)) == [5]
            assert numbers(frames(agent, 1)) == [5]
            assert quiet(canvas, 0.5) == [] and quiet(agent, 0.5) == []

        # A position from before the restart names the old Redis: replayed from the database.
        with open_ws(server, since=before[-1]["position"], workspace=child, token=token) as agent:
            assert numbers(frames(agent, 2)) == [3, 5]
            assert quiet(agent, 0.5) == []


def test_a_stopping_gateway_closes_its_connections_which_resume_elsewhere(db, redis_client):
    ws_id = make_workspace(db, "steady")
    server = Gateway()
    server.start()
    try:
        with open_ws(server) as canvas:
            publish(db, redis_client, cards(ws_id, 0, 3))
            last = frames(canvas, 3)[-1]["position"]
            server.stop()  # SIGTERM: a graceful stop
            _, code, _ = until_closed(canvas, timeout=20)
    finally:
        server.stop()
    assert code in (1001, 1012)  # going away / service restart: reconnect
    publish(db, redis_client, cards(ws_id, 3, 5))
    with gateway() as other, open_ws(other, since=last) as resumed:
        assert numbers(frames(resumed, 2)) == [3, 4]
        assert quiet(resumed, 0.5) == []
