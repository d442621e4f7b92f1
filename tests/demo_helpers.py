"""Helpers for tests that run whole processes (the demo, a CLI worker) in isolation.

Those processes need their own broker and data databases: the session's in-process
`worker` would otherwise consume their messages with the session's settings.
Redis database pairs are reserved with the same lock files as tests/conftest.py, so
every concurrent test run on this host keeps out of the others' way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

REDIS_BASE = os.environ.get("TEST_REDIS_BASE", "redis://127.0.0.1:6379")
PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


@contextlib.contextmanager
def reserved_redis_pair() -> Iterator[tuple[str, str]]:
    """(data URL, broker URL) on two Redis databases nobody else holds; flushed."""
    import redis
    from conftest import _reserve_redis_dbs  # the same lock files as the session's pair

    first, second, lock = _reserve_redis_dbs()
    urls = (f"{REDIS_BASE}/{first}", f"{REDIS_BASE}/{second}")
    try:
        for url in urls:
            redis.Redis.from_url(url).flushdb()
        yield urls
    finally:
        for url in urls:
            redis.Redis.from_url(url).flushdb()
        lock.close()


@contextlib.contextmanager
def scratch_database(base_url: str, suffix: str) -> Iterator[str]:
    """The URL of a database `<name>_<suffix>` (created by whoever migrates), dropped after."""
    name = base_url.rsplit("/", 1)[1] + f"_{suffix}"
    url = base_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def private_rabbitmq_vhost() -> Iterator[str]:
    """An AMQP broker URL on a RabbitMQ vhost of our own (nobody else consumes it)."""
    tool = shutil.which("rabbitmqctl")
    assert tool, "rabbitmqctl is not installed"
    vhost = f"molecule-client-{uuid.uuid4().hex[:8]}"

    def ctl(*args: str) -> None:
        subprocess.run([tool, *args], capture_output=True, timeout=60, check=True)

    ctl("add_vhost", vhost)
    try:
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        ctl("delete_vhost", vhost)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A local port nothing listens on (bound then released)."""
    return free_port()


def scrape(url: str, timeout: float = 3.0) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    samples: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        samples[key] = float(value)
    return samples


def wait_for(predicate, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def processes_matching(pgids: set[int], needle: str | None = None) -> list[str]:
    """Live processes in one of `pgids`, or whose command line contains `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if state == "Z":
            continue
        if pgrp in pgids or (needle and needle in cmdline):
            found.append(f"{entry.name} (pgid {pgrp}): {cmdline.strip()}")
    return found
