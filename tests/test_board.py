"""The fleet board: snapshot + event stream endpoints, and the page in headless Chromium."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from board_helpers import make_workspace, private_redis, publish
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import text

from registry.board.server import BoardServer
from registry.events.subscriber import Position, stream_head
from registry.statuses import EventType

# Heartbeats reach the stream only with EVENTS_STREAM_BROADCASTS on (CONTRACT §7).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("events_stream_broadcasts")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# board.css: the colours a person tells statuses apart by.
ONLINE_RGB = "rgb(34, 197, 94)"
DEGRADED_RGB = "rgb(245, 158, 11)"
OFFLINE_RGB = "rgb(239, 68, 68)"
CLI = str(Path(sys.executable).parent / "molecule-registry")


@pytest.fixture
def board(db, redis_client) -> Iterator[BoardServer]:
    server = BoardServer(("127.0.0.1", 0), db, redis_client)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, board: BoardServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(board.url)
    page.wait_for_selector('#link[data-state="live"]', timeout=10_000)
    try:
        yield page
    finally:
        context.close()
    assert errors == [], errors


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def tile(page: Page, workspace_id: str, status: str, timeout_ms: int = 5000) -> Any:
    return page.wait_for_selector(
        f'.tile[data-id="{workspace_id}"][data-status="{status}"]', timeout=timeout_ms
    )


def wait_for_colour(page: Page, workspace_id: str, rgb: str, since: float, within: float) -> float:
    """Seconds from `since` until the tile is painted `rgb` (its 0.4 s transition done)."""
    remaining_ms = max(1, int((since + within - time.monotonic()) * 1000))
    page.wait_for_function(
        """([id, rgb]) => {
            const el = document.querySelector(`.tile[data-id="${id}"]`);
            return el !== null && getComputedStyle(el).borderLeftColor === rgb;
        }""",
        arg=[workspace_id, rgb],
        timeout=remaining_ms,
        polling=50,
    )
    return time.monotonic() - since


def read_sse(response: http.client.HTTPResponse, count: int) -> list[dict[str, str]]:
    """The next `count` messages (comments and the retry line skipped)."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while len(messages) < count:
        line = response.readline().decode().rstrip("\n")
        if not line:
            if "data" in current:
                messages.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        current[key] = value
    return messages


# ---------------------------------------------------------------------------
# Endpoints


def test_snapshot_lists_the_fleet_with_a_position(board, db, redis_client):
    alive = make_workspace(db, "alive", status="online", active_tasks=2)
    make_workspace(db, "gone", status="removed")
    publish(db, redis_client, [(EventType.WORKSPACE_ONLINE, alive, {"recovered_from": "offline"})])

    snapshot = get_json(board.url + "api/snapshot")
    assert [w["name"] for w in snapshot["workspaces"]] == ["alive"]
    (workspace,) = snapshot["workspaces"]
    assert workspace["id"] == alive and workspace["status"] == "online"
    assert workspace["active_tasks"] == 2
    position = Position.from_token(snapshot["position"])
    assert position.stream_id == stream_head(redis_client).stream_id
    assert position.event_id == 1
    assert snapshot["self_preservation"] == {"active": False}

    assert get_json(board.url + f"api/workspaces/{alive}")["name"] == "alive"
    for path, status in ((f"api/workspaces/{uuid.uuid4()}", 404), ("api/workspaces/x", 400)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(board.url + path, timeout=10)
        assert refused.value.code == status
    for path, kind in (
        ("", "text/html"),
        ("board.js", "text/javascript"),
        ("board.css", "text/css"),
    ):
        with urllib.request.urlopen(board.url + path, timeout=10) as response:
            assert response.headers["Content-Type"].startswith(kind)


def test_event_stream_resumes_from_last_event_id_and_ignores_a_stalled_client(
    board, db, redis_client
):
    ws = make_workspace(db, "streamed")
    start = stream_head(redis_client).token()
    # A client that connects and never reads must not hold anyone else up.
    stalled = socket.create_connection(board.server_address[:2])
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stalled.sendall(f"GET /api/events?since={start} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        publish(
            db,
            redis_client,
            [
                (EventType.WORKSPACE_DEGRADED, ws, {"error_rate": 0.9}),
                (EventType.WORKSPACE_HEARTBEAT, ws, {"active_tasks": 3, "uptime_seconds": 9}),
                (EventType.WORKSPACE_OFFLINE, ws, {"reason": "liveness_expired"}),
            ],
        )
        host, port = board.server_address[:2]
        first = http.client.HTTPConnection(host, port, timeout=10)
        first.request("GET", f"/api/events?since={start}")
        response = first.getresponse()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        one, two = read_sse(response, 2)
        first.close()
        assert one["event"] == "registry"
        data = json.loads(one["data"])
        assert data["event"] == "WORKSPACE_DEGRADED"
        assert data["gist"] == "online → degraded (error_rate 0.90)"
        assert json.loads(two["data"])["payload"]["active_tasks"] == 3

        # What a browser does after a drop: reconnect with the last id it saw.
        again = http.client.HTTPConnection(host, port, timeout=10)
        again.request("GET", f"/api/events?since={start}", headers={"Last-Event-ID": two["id"]})
        (three,) = read_sse(again.getresponse(), 1)
        again.close()
        assert json.loads(three["data"])["event"] == "WORKSPACE_OFFLINE"
    finally:
        stalled.close()


# ---------------------------------------------------------------------------
# The page


def test_tile_changes_colour_on_degrading_heartbeat_and_offline_sweep(page, db, worker, celery_app):
    created = celery_app.send_task(
        "registry.create_workspace", args=[{"name": "degrade-me"}], queue="registry"
    ).get(timeout=20)
    ws = created["workspace_id"]
    registered = celery_app.send_task(
        "registry.register",
        args=[{"id": ws, "agent_card": {"name": "d"}, "delivery_mode": "poll"}],
        queue="registry",
    ).get(timeout=20)
    token = registered["auth_token"]
    tile(page, ws, "online")  # created after the page loaded: fetched on its first event
    wait_for_colour(page, ws, ONLINE_RGB, since=time.monotonic(), within=2.0)

    sent = time.monotonic()
    celery_app.send_task(
        "registry.heartbeat",
        args=[{"workspace_id": ws, "auth_token": token, "error_rate": 0.9, "active_tasks": 1}],
        queue="registry.heartbeats",
    )
    assert wait_for_colour(page, ws, DEGRADED_RGB, since=sent, within=2.0) < 2.0
    assert tile(page, ws, "degraded").inner_text().startswith("DEGRADED")
    page.wait_for_function(
        f"""document.querySelector('.tile[data-id="{ws}"] .tasks').textContent === '1/1 active'"""
    )

    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour' WHERE id = :id"
            ),
            {"id": ws},
        )
    sent = time.monotonic()
    swept = celery_app.send_task("registry.sweep_backstop", queue="registry.sweeps")
    assert wait_for_colour(page, ws, OFFLINE_RGB, since=sent, within=2.0) < 2.0
    assert swept.get(timeout=20)["changed"] == 1
    tile(page, ws, "offline")
    assert page.inner_text('#legend .chip[data-status="offline"] b') == "1"
    feed = page.inner_text("#events")
    assert "offline (liveness_expired, was degraded)" in feed
    assert "online → degraded (error_rate 0.90)" in feed


def test_page_opened_late_shows_the_fleet_then_follows_it(browser, board, db, redis_client):
    online = make_workspace(db, "a-online", status="online", active_tasks=1)
    make_workspace(db, "b-degraded", status="degraded")
    make_workspace(db, "c-hibernated", status="hibernated")
    # Events published before the page opens are already in the snapshot.
    publish(db, redis_client, [(EventType.WORKSPACE_ONLINE, online, {"recovered_from": "x"})])

    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(board.url)
        page.wait_for_selector('#link[data-state="live"]', timeout=10_000)
        names = page.eval_on_selector_all(".tile .name", "els => els.map(e => e.textContent)")
        assert names == ["a-online", "b-degraded", "c-hibernated"]
        assert page.inner_text('#legend .chip[data-status="degraded"] b') == "1"
        assert page.inner_text("#total") == "3"

        newcomer = make_workspace(db, "aa-new", status="online", runtime="external")
        publish(
            db,
            redis_client,
            [
                (EventType.WORKSPACE_HEARTBEAT, online, {"active_tasks": 4, "uptime_seconds": 5}),
                (EventType.WORKSPACE_ONLINE, newcomer, {"recovered_from": "awaiting_agent"}),
            ],
        )
        tile(page, newcomer, "online")  # unknown to the page: fetched from the database
        page.wait_for_function(
            f"""document.querySelector('.tile[data-id="{online}"] .tasks')"""
            """.textContent === '4/1 active'"""
        )
        names = page.eval_on_selector_all(".tile .name", "els => els.map(e => e.textContent)")
        assert names == ["a-online", "aa-new", "b-degraded", "c-hibernated"]

        publish(db, redis_client, [(EventType.WORKSPACE_REMOVED, online, {})])
        page.wait_for_selector(f'.tile[data-id="{online}"]', state="detached", timeout=5000)
        assert page.inner_text("#total") == "3"
    finally:
        context.close()


def test_page_reloads_the_fleet_after_a_redis_restart(browser, db):
    ws = make_workspace(db, "survivor", status="online")
    with private_redis() as redis_server:
        server = BoardServer(("127.0.0.1", 0), db, redis_server.client())
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        thread.start()
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(server.url)
            page.wait_for_selector('#link[data-state="live"]', timeout=10_000)
            tile(page, ws, "online")

            redis_server.kill()
            # Changed while Redis is down: the event cannot be published.
            with db.begin() as conn:
                conn.execute(
                    text("UPDATE workspaces SET status = 'offline' WHERE id = :id"), {"id": ws}
                )
            redis_server.start()
            # The stream is new: the page is told of the gap and reloads the fleet.
            tile(page, ws, "offline", timeout_ms=10_000)
            page.wait_for_selector("#events li.gap", timeout=5000)
            assert "Redis restarted" in page.inner_text("#events li.gap")
            page.wait_for_selector('#link[data-state="live"]', timeout=10_000)
        finally:
            context.close()
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def test_board_command_serves_until_stopped(db, test_env):
    process = subprocess.Popen(
        [CLI, "board", "--port", "0"],
        env={**test_env, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("fleet board on http://127.0.0.1:"), line
        url = line.split()[3]
        assert get_json(url + "api/snapshot")["workspaces"] == []
    finally:
        process.terminate()
        process.wait(timeout=10)
