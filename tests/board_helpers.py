"""Shared by the subscriber, events CLI and board tests: rows, events, a private Redis."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from sqlalchemy import Engine, text

from registry.events.subscriber import Item, ReceivedEvent, Subscriber
from registry.statuses import BROADCAST_ONLY_EVENTS, EventType
from registry.uow import broadcast_event_on_commit, record_event_on_commit, unit_of_work

EventSpec = tuple[EventType, str | None, dict[str, Any]]


def make_workspace(
    engine: Engine, name: str, status: str = "online", runtime: str = "langgraph", **columns: Any
) -> str:
    """Insert a workspace row directly (the tests here are about events, not creation)."""
    workspace_id = str(columns.pop("id", uuid.uuid4()))
    values = {"id": workspace_id, "name": name, "status": status, "runtime": runtime, **columns}
    names = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO workspaces ({names}) VALUES ({params})"), values)
    return workspace_id


# The fleet of 5,000 (3,000 online, 400 degraded, 600 offline, 300 awaiting
# agent, 12 failed, the rest provisioning, paused and hibernated).
FLEET_5000 = {
    "online": 3000,
    "degraded": 400,
    "offline": 600,
    "awaiting_agent": 300,
    "failed": 12,
    "provisioning": 88,
    "paused": 100,
    "hibernated": 500,
}
RUNTIMES = ("langgraph", "crewai", "autogen", "external")


def seed_fleet(engine: Engine, counts: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Insert many workspaces in one statement: status -> rows (id, name, runtime).

    Names are `<status>-<nnnnn>` (nnnnn counts across the fleet), runtimes cycle
    through RUNTIMES, so a test can tell what it should see.
    """
    rows: list[dict[str, str]] = []
    by_status: dict[str, list[dict[str, str]]] = {}
    for status, count in counts.items():
        for _ in range(count):
            n = len(rows)
            row = {
                "id": str(uuid.uuid4()),
                "name": f"{status}-{n:05d}",
                "status": status,
                "runtime": RUNTIMES[n % len(RUNTIMES)],
            }
            rows.append(row)
            by_status.setdefault(status, []).append(row)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, runtime, last_heartbeat_at) "
                "VALUES (:id, :name, :status, :runtime, now())"
            ),
            rows,
        )
    return by_status


def publish(
    engine: Engine, client: redis.Redis, events: Iterable[EventSpec], per_transaction: int = 1
) -> None:
    """Publish through the real path: unit of work, structure_events, outbox, pipeline."""
    batch: list[EventSpec] = []

    def flush() -> None:
        with unit_of_work(engine, client) as uow:
            for event_type, workspace_id, payload in batch:
                ws = uuid.UUID(workspace_id) if workspace_id else None
                if event_type in BROADCAST_ONLY_EVENTS:
                    broadcast_event_on_commit(uow, event_type, ws, payload)
                else:
                    record_event_on_commit(uow, event_type, ws, payload)
        batch.clear()

    for spec in events:
        batch.append(spec)
        if len(batch) >= per_transaction:
            flush()
    if batch:
        flush()


def numbered(count: int, workspace_id: str, start: int = 0) -> list[EventSpec]:
    """`count` events, every third one broadcast-only, each carrying its number `n`."""
    specs: list[EventSpec] = []
    for n in range(start, start + count):
        if n % 3 == 2:
            specs.append((EventType.WORKSPACE_HEARTBEAT, workspace_id, {"n": n, "active_tasks": 1}))
        else:
            specs.append((EventType.AGENT_CARD_UPDATED, workspace_id, {"n": n, "agent_card": {}}))
    return specs


def drain(subscriber: Subscriber, timeout: float = 30) -> list[Item]:
    """Everything up to now (follow=False), failing instead of hanging."""
    items: list[Item] = []
    deadline = time.monotonic() + timeout
    for item in subscriber.events(follow=False, block_ms=0):
        items.append(item)
        assert time.monotonic() < deadline, "subscriber did not catch up in time"
    return items


def collect(subscriber: Subscriber, count: int, timeout: float = 20) -> list[Item]:
    """Poll until `count` events arrived (gap notices are kept but not counted)."""
    items: list[Item] = []
    deadline = time.monotonic() + timeout
    while sum(isinstance(i, ReceivedEvent) for i in items) < count:
        assert time.monotonic() < deadline, f"only {len(items)} items after {timeout} s: {items}"
        items.extend(subscriber.poll(block_ms=200))
    return items


def events_only(items: Iterable[Item]) -> list[ReceivedEvent]:
    return [i for i in items if isinstance(i, ReceivedEvent)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A throw-away redis-server (no persistence, like ours) that tests may kill."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)
            finally:
                probe.connection_pool.disconnect()

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved (Redis keeps nothing on disk here)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
