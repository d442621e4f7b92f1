"""The gateway WebSocket's pure pieces: frames, origins, bearer parsing, the audience
index and the broadcast throttle (no server needed)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from sqlalchemy import create_engine

from gateway.admission import Refusal, Viewer, admit_canvas, bearer, org_refusal
from gateway.audience import Audience
from gateway.clients import Client
from gateway.fanout import Fanout
from gateway.frames import event_frame
from gateway.throttle import BroadcastThrottle
from registry.config import load
from registry.events.subscriber import ReceivedEvent

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def event(kind: str, workspace: str | None = "w1", payload: dict | None = None) -> ReceivedEvent:
    return ReceivedEvent(kind, workspace, NOW, payload or {}, None, None)


def test_a_status_change_frame_says_the_new_status_and_never_overwrites_one():
    frame = json.loads(
        event_frame(event("WORKSPACE_PROVISION_FAILED", payload={"error": "x"}), "1-0")
    )
    assert frame == {
        "event": "WORKSPACE_PROVISION_FAILED",
        "workspace_id": "w1",
        "timestamp": "2026-01-31T12:00:00.000Z",
        "payload": {"error": "x", "status": "failed"},
        "position": "1-0",
    }
    kept = json.loads(event_frame(event("WORKSPACE_ONLINE", payload={"status": "odd"}), "1-0"))
    assert kept["payload"] == {"status": "odd"}
    card = json.loads(event_frame(event("AGENT_CARD_UPDATED", payload={"agent_card": {}}), "1-0"))
    assert "status" not in card["payload"]


def test_canvas_origins_and_token():
    defaults = load({})
    assert admit_canvas(defaults, None, "gw:8080", False, None) == Viewer()
    assert admit_canvas(defaults, "http://gw:8080", "gw:8080", False, None) == Viewer()
    assert admit_canvas(defaults, "https://gw:8080", "gw:8080", True, None) == Viewer()
    assert admit_canvas(defaults, "http://localhost:3000/", "gw:8080", False, None) == Viewer()
    assert admit_canvas(defaults, "https://gw:8080", "gw:8080", False, None) == Refusal(
        403, "origin not allowed"
    )
    secured = load({"GATEWAY_CANVAS_TOKEN": "s3cret"})
    assert isinstance(admit_canvas(secured, None, "gw", False, None), Refusal)
    assert isinstance(admit_canvas(secured, None, "gw", False, "s3cre"), Refusal)
    assert admit_canvas(secured, None, "gw", False, "s3cret") == Viewer()


def test_a_foreign_organisation_is_refused_when_one_is_configured():
    assert org_refusal(load({}), "any") is None
    configured = load({"MOLECULE_ORG_ID": "org-1"})
    assert org_refusal(configured, None) is None  # a browser's canvas cannot send it
    assert org_refusal(configured, "org-1") is None
    assert org_refusal(configured, "org-2") == Refusal(
        403, "X-Molecule-Org-Id does not match this registry"
    )


def test_bearer():
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_the_audience_follows_each_agents_peers():
    audience = Audience()
    canvas = Client(Viewer(), 10)
    agent = Client(Viewer("a", "t"), 10)
    agent.peers = frozenset({"a", "b"})
    audience.add(canvas)
    audience.add(agent)
    assert set(audience.watching("b")) == {agent}
    agent.peers = agent.peers | {"c"}
    agent.removed("b")
    assert set(audience.watching("c")) == {agent}
    assert set(audience.watching("b")) == set()
    audience.discard(agent)
    assert set(audience.watching("a")) == set()
    assert audience.canvases == {canvas} and len(audience) == 1


def test_a_client_past_its_bound_is_marked_not_skipped():
    client = Client(Viewer(), 2)
    for n in range(3):
        client.offer((n, f"frame {n}", None))
    assert client.overflowed.is_set()
    assert client.queue.qsize() == 2


def test_the_throttle_sends_the_first_at_once_and_the_newest_when_the_second_ends():
    sent: list[ReceivedEvent] = []

    async def run() -> None:
        throttle = BroadcastThrottle(sent.append, interval=0.2)
        for n in range(5):
            throttle.offer(event("WORKSPACE_HEARTBEAT", payload={"n": n}))
        throttle.offer(event("WORKSPACE_HEARTBEAT", "w2", {"n": 9}))
        assert [e.payload["n"] for e in sent] == [0, 9]
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert [(e.workspace_id, e.payload["n"]) for e in sent] == [("w1", 0), ("w2", 9), ("w1", 4)]


def fanout_with(*clients: Client) -> Fanout:
    """A fan-out with these clients and no reader (nothing here connects anywhere)."""
    fanout = Fanout(create_engine("postgresql+psycopg2://nobody@127.0.0.1:9/none"), "redis://x")
    fanout.replays.shutdown()
    for client in clients:
        fanout.add(client)
    return fanout


def agent(workspace: str, peers: set[str]) -> Client:
    client = Client(Viewer(workspace, "t"), 10)
    client.peers = frozenset(peers)
    return client


def test_a_new_workspace_goes_to_the_agents_its_lookup_found_and_joins_their_peers():
    canvas, allowed, other = Client(Viewer(), 10), agent("a", {"a"}), agent("b", {"b"})
    fanout = fanout_with(canvas, allowed, other)
    # As the reader thread found it: the workspaces that may see the new one "w".
    fanout._fresh["w"] = (time.monotonic(), frozenset({"w", "a"}))
    fanout._dispatch(ReceivedEvent("WORKSPACE_ONLINE", "w", NOW, {}, 1, "1-0"), "1-0")
    assert canvas.queue.qsize() == 1
    assert allowed.queue.get_nowait()[2] is None  # no check left to the connection
    assert other.queue.empty()
    assert "w" in allowed.peers and set(fanout.audience.watching("w")) == {allowed}


def test_a_new_workspace_not_looked_up_is_checked_only_by_agents_whose_peers_predate_it():
    older, newer = agent("a", {"a"}), agent("b", {"b"})
    first_seen = time.monotonic()
    older.peers_as_of, newer.peers_as_of = first_seen - 1, first_seen + 1
    fanout = fanout_with(older, newer)
    fanout._fresh["w"] = (first_seen, None)  # no agent was connected when it was seen
    fanout._dispatch(ReceivedEvent("WORKSPACE_ONLINE", "w", NOW, {}, 1, "1-0"), "1-0")
    assert older.queue.get_nowait()[2] == "w"  # asks can_communicate before sending
    assert newer.queue.empty()  # its peer set, read later, already says whether it may
