"""Shared by the liveness tests (listener, backstop, health sweep, self-preservation).

Rows come from maintenance_helpers (plain SQL); time is moved by writing timestamps
into the past through the database. `PrivateRedis` is a throw-away redis-server on a
free port, for what the shared server must not suffer: restarts, refused CONFIG, a
broker no other test consumes.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import redis
from sqlalchemy import Engine, text

LISTENER_READY = r"liveness listener ready"


def fresh_liveness_state(db: Engine) -> Iterator[Engine]:
    """Body of each module's `liveness_db` fixture: `db` plus a clean self-preservation
    state and no probes, before and after (conftest's `db` does not know these tables).
    """
    reset_self_preservation(db)
    yield db
    reset_self_preservation(db)


def reset_self_preservation(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE heartbeat_probes"))
        conn.execute(
            text(
                "UPDATE registry_self_preservation "
                "SET active = false, reason = NULL, figures = NULL, since = NULL"
            )
        )


def add_fleet(
    engine: Engine,
    count: int,
    *,
    status: str = "online",
    runtime: str = "langgraph",
    heartbeat_age: str | None = "5 seconds",
) -> list[UUID]:
    """`count` workspaces in one INSERT; `heartbeat_age` is an SQL interval (None: NULL)."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                """
                INSERT INTO workspaces (id, name, status, runtime, last_heartbeat_at)
                SELECT gen_random_uuid(), 'fleet-' || g, :status, :runtime,
                       now() - CAST(:age AS interval)
                FROM generate_series(1, :count) AS g
                RETURNING id
                """
            ),
            {"status": status, "runtime": runtime, "age": heartbeat_age, "count": count},
        ).all()
    return [row.id for row in rows]


def age_heartbeats(engine: Engine, ids: Sequence[UUID], age: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() - CAST(:age AS interval) "
                "WHERE id = ANY(:ids)"
            ),
            {"age": age, "ids": list(ids)},
        )


def statuses(engine: Engine, ids: Sequence[UUID]) -> dict[UUID, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status FROM workspaces WHERE id = ANY(:ids)"), {"ids": list(ids)}
        )
        return {row.id: row.status for row in rows}


def self_preservation_events(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            row.payload
            for row in conn.execute(
                text(
                    "SELECT payload FROM structure_events "
                    "WHERE event_type = 'REGISTRY_SELF_PRESERVATION' ORDER BY id"
                )
            )
        ]


def unreachable_events(engine: Engine) -> list[tuple[str, UUID, dict]]:
    with engine.connect() as conn:
        return [
            (row.event_type, row.workspace_id, row.payload)
            for row in conn.execute(
                text(
                    "SELECT event_type, workspace_id, payload FROM structure_events "
                    "WHERE event_type IN ('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT') "
                    "ORDER BY id"
                )
            )
        ]


def wait_until(predicate, *, timeout: float = 15, interval: float = 0.1, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def listener_argv(cli: bool = False) -> list[str]:
    """The listener as CONTRACT §1 starts it, or through the CLI alias."""
    if cli:
        return [str(Path(sys.executable).with_name("molecule-registry")), "liveness"]
    return [sys.executable, "-m", "workers.liveness"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own (no persistence) that can be killed and restarted."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        self.workdir = workdir
        self.extra_args = extra_args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: dict[int, redis.Redis] = {}

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A client of this server (one per db, closed with the server)."""
        if db not in self._clients:
            self._clients[db] = redis.Redis.from_url(
                self.url(db), decode_responses=True, socket_timeout=5
            )
        return self._clients[db]

    def start(self) -> PrivateRedis:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5) as probe:
                return bool(probe.ping())
        except redis.exceptions.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL, like a crash: every key is lost (no persistence)."""
        for client in self._clients.values():
            client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672"


def _rabbitmqctl(*args: str) -> None:
    tool = shutil.which("rabbitmqctl")
    assert tool, "rabbitmqctl is not installed"
    subprocess.run([tool, *args], capture_output=True, timeout=60, check=True)


@contextmanager
def private_rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of our own: a broker URL whose queues nobody else consumes."""
    vhost = f"molecule-liveness-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)
