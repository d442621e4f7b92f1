"""A real gateway process serving `/ws` (uvicorn), a real WebSocket client, and tokens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from board_helpers import free_port
from sqlalchemy import Engine
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from registry.ingestion.tokens import issue_token

TESTS = Path(__file__).parent


class Gateway:
    """`uvicorn gateway_ws_app:build` in a process of its own, on a free port."""

    def __init__(self, ping_interval: float = 1.0, **env: str) -> None:
        self.env = env
        self.ping_interval = ping_interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = TESTS.parent / ".pytest_cache" / f"gateway-ws-{self.port}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *os.environ.get("GATEWAY_WS_PROFILE", "").split(),  # e.g. "-m cProfile -o f"
                    *("-m", "uvicorn", "gateway_ws_app:build", "--factory"),
                    *("--app-dir", str(TESTS), "--port", str(self.port), "--ws", "auto"),
                    *(
                        "--log-level",
                        "warning",
                        "--ws-ping-interval",
                        str(self.ping_interval),
                        "--ws-per-message-deflate",
                        "false",
                    ),
                ],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


@contextmanager
def gateway(ping_interval: float = 1.0, **env: str) -> Iterator[Gateway]:
    server = Gateway(ping_interval, **env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_ws(
    server: Gateway,
    *,
    since: str | None = None,
    workspace: str | None = None,
    token: str | None = None,
    origin: str | None = None,
    max_queue: int | None = 64,
) -> ClientConnection:
    url = server.url if since is None else f"{server.url}?since={since}"
    headers: dict[str, str] = {}
    if workspace is not None:
        headers["X-Workspace-ID"] = workspace
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return connect(
        url,
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]
        max_queue=max_queue,
        open_timeout=10,
    )


def refused_status(server: Gateway, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body a refused handshake answers."""
    try:
        ws = open_ws(server, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")
    ws.close()
    raise AssertionError("the handshake was accepted")


BROADCAST_ONLY = {"WORKSPACE_HEARTBEAT", "TASK_UPDATED"}
Keep = Callable[[dict[str, Any]], bool]


def recorded(frame: dict[str, Any]) -> bool:
    """The default filter: pub/sub channels ignore Redis database numbers, so other test
    runs' heartbeats reach our gateway; tests of recorded events leave them out."""
    return frame["event"] not in BROADCAST_ONLY


def frames(
    ws: ClientConnection, count: int, timeout: float = 20, keep: Keep = recorded
) -> list[dict[str, Any]]:
    """The next `count` frames (failing after `timeout` seconds)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} frames: {got}"
        try:
            frame = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        if keep(frame):
            got.append(frame)
    return got


def quiet(
    ws: ClientConnection, seconds: float = 1.0, keep: Keep = recorded
) -> list[dict[str, Any]]:
    """Whatever arrives within `seconds` (to check that nothing more does)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        if keep(frame):
            got.append(frame)
    return got


def until_closed(
    ws: ClientConnection, timeout: float = 30
) -> tuple[list[dict[str, Any]], int, str]:
    """Every frame up to the close, and the close's code and reason."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"not closed after {timeout} s ({len(got)} frames)"
        try:
            frame = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"closed without a close frame: {exc!r}"
            return got, exc.rcvd.code, exc.rcvd.reason
        if recorded(frame) or frame["event"] == "STREAM_TOO_OLD":
            got.append(frame)


def token_for(engine: Engine, workspace_id: str) -> str:
    """A live token of the workspace, issued by the registry's own code."""
    with engine.begin() as conn:
        return issue_token(conn, uuid.UUID(workspace_id), None)


def numbers(frames_: list[dict[str, Any]]) -> list[int]:
    return [f["payload"]["n"] for f in frames_]
