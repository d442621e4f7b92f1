"""The board on the ASGI stack: under a prefix, its event-stream cap, gzip, stopping."""

from __future__ import annotations

import ast
import http.client
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from board_helpers import make_workspace, publish
from playwright.sync_api import sync_playwright
from test_board import CHROMIUM, CHROMIUM_ARGS, CLI, read_sse, tile

from gateway.board_serve import BoardServer
from registry.events.subscriber import stream_head
from registry.statuses import EventType

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("events_stream_broadcasts")]


@contextmanager
def served(db, redis_client, **options) -> Iterator[BoardServer]:
    server = BoardServer("127.0.0.1", 0, db, redis_client, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: BoardServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(*server.server_address, timeout=10)


def test_the_page_works_under_a_prefix(db, redis_client):
    ws = make_workspace(db, "prefixed", status="online")
    with served(db, redis_client, prefix="/board") as server:
        assert server.url.endswith("/board/")
        conn = connect(server)
        conn.request("GET", "/board?q=x")  # relative URLs need the slash: redirected
        response = conn.getresponse()
        response.read()
        assert response.status == 307
        assert response.headers["Location"].endswith("/board/?q=x")
        conn.request("GET", "/api/snapshot")  # not the board's path any more
        assert conn.getresponse().status == 404
        conn.close()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url)
                page.wait_for_selector('#link[data-state="live"]', timeout=10_000)
                tile(page, ws, "online")
                publish(db, redis_client, [(EventType.WORKSPACE_OFFLINE, ws, {})])
                tile(page, ws, "offline")  # the event stream, under the prefix too
                assert errors == []
            finally:
                browser.close()


def test_event_streams_over_the_cap_are_refused_and_slots_come_back(db, redis_client):
    with served(db, redis_client, max_streams=1) as server:
        first = connect(server)
        first.request("GET", "/api/events")
        opened = first.getresponse()
        assert opened.status == 200
        second = connect(server)
        second.request("GET", "/api/events")
        refused = second.getresponse()
        assert refused.status == 503
        assert refused.headers["Retry-After"]
        assert "too many board event streams" in json.loads(refused.read())["error"]
        second.close()
        first.close()  # the browser goes: its slot is free again (within a poll)
        deadline = time.monotonic() + 10
        while True:
            again = connect(server)
            again.request("GET", "/api/events")
            response = again.getresponse()
            status = response.status
            again.close()
            if status == 200:
                break
            assert time.monotonic() < deadline, "the closed stream's slot never came back"
            time.sleep(0.2)
        assert server.board.streams.open_count <= 1


def test_the_event_stream_is_not_gzipped_nor_buffered(db, redis_client):
    ws = make_workspace(db, "zipped")
    since = stream_head(redis_client).token()
    with served(db, redis_client) as server:
        conn = connect(server)
        conn.request("GET", f"/api/events?since={since}", headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers.get("Content-Encoding") is None
        publish(db, redis_client, [(EventType.WORKSPACE_DEGRADED, ws, {"error_rate": 0.9})])
        # One small event arrives on its own: nothing waits for a buffer to fill.
        (message,) = read_sse(response, 1)
        assert json.loads(message["data"])["event"] == "WORKSPACE_DEGRADED"
        conn.close()


def test_stopping_ends_open_event_streams_promptly(db, redis_client):
    server = BoardServer("127.0.0.1", 0, db, redis_client)
    server.start()
    conn = connect(server)
    conn.request("GET", "/api/events")
    response = conn.getresponse()
    assert response.status == 200
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3  # not the graceful-shutdown backstop
    assert response.read().startswith(b"retry:")  # the stream was finished, not cut
    conn.close()


def test_board_command_stops_on_ctrl_c_with_a_stream_open(db, test_env):
    process = subprocess.Popen(
        [CLI, "board", "--port", "0"],
        env={**test_env, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[3]
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/api/events")
        assert conn.getresponse().status == 200
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
        assert process.returncode in (0, -signal.SIGINT), process.stderr.read()
        conn.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_a_browser_that_stops_reading_is_dropped(db, redis_client, monkeypatch):
    monkeypatch.setattr("gateway.board_events.WRITE_TIMEOUT_SECONDS", 1)
    ws = make_workspace(db, "flooded")
    with served(db, redis_client, max_streams=1) as server:
        stalled = socket.create_connection(server.server_address)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        host, port = server.server_address
        stalled.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        try:
            deadline = time.monotonic() + 10
            while server.board.streams.open_count == 0:
                assert time.monotonic() < deadline, "the stream never opened"
                time.sleep(0.05)
            # Megabytes of events it never reads: the kernel's buffers fill, then the
            # server's, then a write waits longer than the timeout.
            filler = "x" * 4000
            deadline = time.monotonic() + 60
            while server.board.streams.open_count:
                assert time.monotonic() < deadline, "the stalled stream was never dropped"
                events = [(EventType.AGENT_CARD_UPDATED, ws, {"agent_card": {"f": filler}})] * 200
                publish(db, redis_client, events, per_transaction=100)
            conn = connect(server)  # its slot is free for another page
            conn.request("GET", "/api/events")
            assert conn.getresponse().status == 200
            conn.close()
        finally:
            stalled.close()


def test_the_registry_never_imports_the_web_stack_at_module_level():
    """gateway/ is an application layer over registry/: the CLI imports it lazily only."""
    root = Path(__file__).resolve().parent.parent / "registry"
    found = []
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path}: {name}" for name in names if name.split(".")[0] == "gateway"]
    assert found == []
