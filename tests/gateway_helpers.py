"""A real gateway process for the gateway tests: `molecule-registry gateway` on a free port.

It runs as a subprocess with the test run's environment (so the same PostgreSQL,
Redis and broker as the in-process `worker` fixture), at `--log-level debug` so the
tests can read everything it logs.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from workerproc import ManagedProcess, managed_process, process_env

GATEWAY_READY = r"Uvicorn running on"
CONNECT_CARD = {"name": "laptop-agent", "description": "molecule connect", "version": "1.0.0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_argv(port: int, log_level: str = "debug") -> list[str]:
    """`molecule-registry gateway …`, the installed command of this interpreter's venv."""
    return [
        str(Path(sys.executable).parent / "molecule-registry"),
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]


@dataclass
class RunningGateway:
    url: str
    process: ManagedProcess

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@contextmanager
def running_gateway(
    test_env: dict[str, str], log_dir: Path, **overrides: str
) -> Iterator[RunningGateway]:
    port = free_port()
    env = process_env(test_env, **overrides)
    with managed_process(
        gateway_argv(port), env=env, log_dir=log_dir, ready=GATEWAY_READY, name="gateway"
    ) as process:
        yield RunningGateway(f"http://127.0.0.1:{port}", process)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
