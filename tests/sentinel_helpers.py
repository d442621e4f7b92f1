"""A private Redis Sentinel group for the Sentinel and failover tests.

`SentinelGroup` runs scripts/redis-sentinel.sh (a primary, a replica and three
Sentinels) on free ports in a temporary directory, and stops it at the end; the shared
Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from registry.config import Settings, load

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT_ROOT / "scripts" / "redis-sentinel.sh"
MASTER = "molecule"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base() -> int:
    """A base port whose primary, replica and Sentinel ports are all free."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000, 20)
        if all(_free(base + offset) for offset in (0, 1, 10, 11, 12)):
            return base
    raise RuntimeError("no free ports for a Sentinel group")


class SentinelGroup:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.base = free_base()
        self.sentinel_ports = [self.base + 10, self.base + 11, self.base + 12]

    def _script(self, command: str) -> None:
        subprocess.run(
            [str(SCRIPT), command, "--dir", str(self.dir), "--base", str(self.base)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> SentinelGroup:
        self._script("start")
        return self

    def stop(self) -> None:
        self._script("stop")

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def env(self, db: int = 0) -> dict[str, str]:
        """The settings of a process using this group (REDIS_URL's host is unused and
        points nowhere: a silent fallback to it would fail)."""
        return {
            "REDIS_URL": f"redis://127.0.0.1:1/{db}",
            "REDIS_SENTINELS": self.sentinels,
            "REDIS_SENTINEL_MASTER": MASTER,
            "CELERY_BROKER_URL": "",
            "CELERY_RESULT_BACKEND": "",
        }

    def settings(self, db: int = 0) -> Settings:
        return load(self.env(db))

    def primary_port(self) -> int:
        client = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        with client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def node(self, port: int, db: int = 0) -> redis.Redis:
        return redis.Redis(port=port, db=db, decode_responses=True, socket_timeout=5)

    def kill_primary(self) -> int:
        """kill -9 the primary; its port."""
        port = self.primary_port()
        pid = int((self.dir / str(port) / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        return port

    def wait_for_new_primary(self, old: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.primary_port()
                if port != old and self.node(port).info("replication")["role"] == "master":
                    return port
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"no new primary within {timeout} s")
