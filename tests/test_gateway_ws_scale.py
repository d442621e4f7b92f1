"""The gateway's WebSocket `/ws` at fleet scale (CONTRACT §11): one canvas and many
agent connections on one gateway process while status changes flow at ~100/s; every
connection receives exactly the events it may see, once, in order.

GATEWAY_WS_SCALE_AGENTS sets the number of agents (300 by default, to stay kind to a
shared machine; the issue's figure is 1,000)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import uuid

import pytest
from board_helpers import publish
from gateway_ws_helpers import gateway, recorded
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from registry.ingestion.tokens import issue_token
from registry.statuses import EventType

pytestmark = pytest.mark.integration

AGENTS = int(os.environ.get("GATEWAY_WS_SCALE_AGENTS", "300"))
ROOTS = 10
EVENTS = 500
RATE = 100  # per second
PER_TRANSACTION = 10


def seed(db) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """ROOTS roots, AGENTS children spread under them: ids, parent of each, tokens."""
    roots = [str(uuid.uuid4()) for _ in range(ROOTS)]
    children = [str(uuid.uuid4()) for _ in range(AGENTS)]
    parent = {c: roots[i % ROOTS] for i, c in enumerate(children)}
    tokens: dict[str, str] = {}
    with db.begin() as conn:
        rows = [{"id": r, "name": f"root-{i}", "parent": None} for i, r in enumerate(roots)]
        rows += [
            {"id": c, "name": f"agent-{i}", "parent": parent[c]} for i, c in enumerate(children)
        ]
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, runtime, parent_id) "
                "VALUES (:id, :name, 'online', 'langgraph', :parent)"
            ),
            rows,
        )
        for c in children:
            tokens[c] = issue_token(conn, uuid.UUID(c), None)
    return roots + children, parent, tokens


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def may_see(agent: str, workspace: str, parent: dict[str, str]) -> bool:
    """§9 for this shape: itself, its siblings, its parent root."""
    return (
        workspace == agent or parent.get(workspace) == parent[agent] or workspace == parent[agent]
    )


async def follow(url: str, headers: dict[str, str], got: list[dict]) -> None:
    """Collect the connection's frames until cancelled (a close is noted as a frame)."""
    async with connect(url, additional_headers=headers, open_timeout=120, max_queue=None) as ws:
        got.append({"event": "_open"})
        try:
            async for message in ws:
                frame = json.loads(message)
                if recorded(frame):
                    got.append(frame)
        except ConnectionClosed as exc:
            got.append({"event": "_closed", "payload": {"n": repr(exc)}})


def test_one_canvas_and_many_agents_each_receive_exactly_what_they_may_see(db, redis_client):
    ids, parent, tokens = seed(db)
    agents = list(tokens)
    with gateway(ping_interval=20) as server:  # uvicorn's default
        received: dict[str | None, list[dict]] = {a: [] for a in agents}
        received[None] = []
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        opened = threading.Event()

        async def run() -> None:
            tasks = [
                asyncio.create_task(
                    follow(
                        server.url,
                        {}
                        if a is None
                        else {"X-Workspace-ID": a, "Authorization": f"Bearer {tokens[a]}"},
                        received[a],
                    )
                )
                for a in received
            ]
            while not all(got and got[0]["event"] == "_open" for got in received.values()):
                for t in tasks:
                    if t.done():
                        t.result()  # raises a connection's failure
                await asyncio.sleep(0.1)
            opened.set()
            await stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        thread = threading.Thread(target=lambda: loop.run_until_complete(run()))
        thread.start()
        try:
            assert opened.wait(120), "connections did not open"
            started = time.monotonic()
            rng = random.Random(7)
            sent: list[str] = []
            for first in range(0, EVENTS, PER_TRANSACTION):  # as a sweep marks: in batches
                batch = []
                for n in range(first, first + PER_TRANSACTION):
                    workspace = rng.choice(ids)
                    sent.append(workspace)
                    kind = EventType.WORKSPACE_DEGRADED if n % 2 else EventType.WORKSPACE_ONLINE
                    batch.append((kind, workspace, {"n": n}))
                publish(db, redis_client, batch, per_transaction=PER_TRANSACTION)
                pace = started + (first + PER_TRANSACTION) / RATE - time.monotonic()
                time.sleep(max(0.0, pace))
            finished = time.monotonic()
            rate = EVENTS / (finished - started)
            expected = {a: [n for n, w in enumerate(sent) if may_see(a, w, parent)] for a in agents}
            expected[None] = list(range(EVENTS))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                len(received[a]) - 1 < len(expected[a]) for a in received
            ):
                time.sleep(0.2)
            late = time.monotonic() - finished
            server_cpu = cpu_seconds(server.process.pid)
            own_cpu = cpu_seconds(os.getpid())
            time.sleep(0.5)  # nothing more may come
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=60)
            loop.close()
    print(f"CPU: gateway {server_cpu:.1f} s, test process {own_cpu:.1f} s")
    behind = {w: len(expected[w]) - len(g) + 1 for w, g in received.items()}
    closed = [g[-1]["payload"]["n"] for g in received.values() if g[-1]["event"] == "_closed"]
    assert not closed, f"{len(closed)} connections closed: {closed[:3]}"
    assert not any(behind.values()), sorted(behind.values())[-10:]
    for who, got in received.items():
        assert [f["payload"]["n"] for f in got[1:]] == expected[who], who
    print(
        f"{AGENTS} agents + 1 canvas, {rate:.0f} events/s: every frame in "
        f"{late:.2f} s after the last event"
    )
