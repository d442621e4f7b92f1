"""The clustered stores of the failover proof, each run by its script in scripts/.

- `SentinelGroup`: a Redis primary, a replica and three Sentinels (redis-sentinel.sh);
- `PgPair`: a PostgreSQL primary and a synchronous streaming standby (pg-standby.sh);
- `RabbitCluster`: three clustered RabbitMQ nodes (rabbitmq-cluster.sh).

Each lives in a directory of its own on free ports, never touching the machine's
shared PostgreSQL (5432), Redis (6379) or RabbitMQ (5672); `stop()` stops its nodes.
Nothing here imports the registry (tests and benchmarks set their environment first).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
MASTER = "molecule"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base(offsets: tuple[int, ...], low: int = 20_000, high: int = 60_000) -> int:
    """A base port such that base + each offset is free."""
    for _ in range(500):
        base = random.randrange(low, high, 20)
        if all(_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError("no free ports")


def _script(name: str, *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [str(SCRIPTS / name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class SentinelGroup:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.base = free_base((0, 1, 10, 11, 12))
        self.sentinel_ports = [self.base + 10, self.base + 11, self.base + 12]

    def _run(self, command: str) -> None:
        _script("redis-sentinel.sh", command, "--dir", str(self.dir), "--base", str(self.base))

    def start(self) -> SentinelGroup:
        self._run("start")
        return self

    def stop(self) -> None:
        self._run("stop")

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def env(self, db: int = 0) -> dict[str, str]:
        """The settings of a process using this group. REDIS_URL's host is unused and
        points nowhere: a silent fallback to it would fail."""
        return {
            "REDIS_URL": f"redis://127.0.0.1:1/{db}",
            "REDIS_SENTINELS": self.sentinels,
            "REDIS_SENTINEL_MASTER": MASTER,
            "CELERY_BROKER_URL": "",
            "CELERY_RESULT_BACKEND": "",
        }

    def primary_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
                    _, primary = client.sentinel_get_master_addr_by_name(MASTER)
                return int(primary)
            except redis.exceptions.RedisError:
                continue
        raise RuntimeError("no Sentinel answers")

    def node(self, port: int, db: int = 0) -> redis.Redis:
        return redis.Redis(port=port, db=db, decode_responses=True, socket_timeout=5)

    def kill_primary(self) -> int:
        """kill -9 the primary; its port."""
        port = self.primary_port()
        os.kill(int((self.dir / str(port) / "redis.pid").read_text()), signal.SIGKILL)
        return port

    def wait_for_new_primary(self, old: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.primary_port()
                if port != old and self.node(port).info("replication")["role"] == "master":
                    return port
            except (redis.exceptions.RedisError, RuntimeError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"no new primary within {timeout} s")


class PgPair:
    """A primary and a synchronous standby. Its directory must be reachable by the
    `postgres` user (under /var/tmp, not a private temporary directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.base = free_base((0, 1))
        self.primary_port, self.standby_port = self.base, self.base + 1

    def _run(self, command: str) -> str:
        return _script("pg-standby.sh", command, "--dir", str(self.dir), "--base", str(self.base))

    def start(self) -> PgPair:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self._run("start")
        return self

    def stop(self) -> None:
        self._run("stop")

    def url(self, database: str = "molecule_registry") -> str:
        """The multi-host URL: libpq connects to whichever node accepts writes."""
        return (
            f"postgresql+psycopg2://postgres@/{database}?host=127.0.0.1:{self.primary_port}"
            f"&host=127.0.0.1:{self.standby_port}&target_session_attrs=read-write"
        )

    def standby_url(self, database: str = "molecule_registry") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.standby_port}/{database}"

    def kill_primary(self) -> None:
        self._run("kill-primary")

    def promote(self) -> None:
        self._run("promote")


class RabbitCluster:
    def __init__(self, directory: Path, prefix: str | None = None) -> None:
        self.dir = directory
        self.base = free_base((1, 2, 3, 11, 12, 13), low=20_000, high=24_000)
        self.prefix = prefix or f"mr{os.getpid()}n"

    def _run(self, *args: str) -> str:
        return _script(
            "rabbitmq-cluster.sh",
            *args,
            "--dir",
            str(self.dir),
            "--base",
            str(self.base),
            "--name",
            self.prefix,
            timeout=300,
        )

    def start(self) -> RabbitCluster:
        self._run("start")
        return self

    def stop(self) -> None:
        self._run("stop")

    def port(self, n: int) -> int:
        return self.base + n

    def url(self) -> str:
        """kombu's failover spelling: every node, tried in turn."""
        return ";".join(f"amqp://guest:guest@127.0.0.1:{self.port(n)}//" for n in (1, 2, 3))

    def node_name(self, n: int) -> str:
        return f"{self.prefix}{n}@localhost"

    def pid(self, n: int) -> int:
        return int(self._run("pid", str(n)).strip())

    def leader_of(self, queue: str, ask: int = 1) -> int:
        """The node number leading quorum queue `queue`."""
        out = subprocess.run(
            [
                "runuser",
                "-u",
                "rabbitmq",
                "--",
                "env",
                "HOME=/var/lib/rabbitmq",
                "/usr/lib/rabbitmq/bin/rabbitmqctl",
                "-n",
                self.node_name(ask),
                "list_queues",
                "name",
                "leader",
                "--formatter",
                "json",
            ]
            if os.geteuid() == 0
            else [
                "rabbitmqctl",
                "-n",
                self.node_name(ask),
                "list_queues",
                "name",
                "leader",
                "--formatter",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for row in json.loads(out):
            if row["name"] == queue:
                return int(str(row["leader"]).split("@")[0].removeprefix(self.prefix))
        raise RuntimeError(f"{queue} not found on the cluster")

    def kill(self, n: int) -> None:
        os.kill(self.pid(n), signal.SIGKILL)

    def discard(self) -> None:
        """SIGKILL every node still running: quicker than `stop` when the data goes too."""
        for n in (1, 2, 3):
            with contextlib.suppress(OSError, ValueError):  # not running, or never started
                os.kill(int((self.dir / f"node{n}" / "pid").read_text().strip()), signal.SIGKILL)
