"""The fleet board: snapshot + event stream endpoints, and the page in headless Chromium."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from board_helpers import FLEET_5000, make_workspace, private_redis, publish, seed_fleet
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import text

from gateway.board_serve import BoardServer
from registry.board.beats import ChannelBeats
from registry.board.hosts import HostCheck
from registry.events.outbox import BROADCAST_CHANNEL
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
    server = BoardServer("127.0.0.1", 0, db, redis_client)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
    beat = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    alive = make_workspace(db, "alive", status="online", active_tasks=2, last_heartbeat_at=beat)
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

    # PostgreSQL writes the tiles' JSON: the fields and the time format of the details.
    details = get_json(board.url + f"api/workspaces/{alive}")
    assert details["name"] == "alive"
    assert workspace["last_heartbeat_at"] == "2026-01-02T03:04:05.678Z"
    assert {key: details[key] for key in workspace} == workspace
    assert set(workspace) == {
        *("id", "name", "status", "runtime", "tier", "active_tasks"),
        *("max_concurrent_tasks", "current_task", "last_heartbeat_at"),
    }
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
    host, port = board.server_address[:2]
    stalled.sendall(
        f"GET /api/events?since={start} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    )
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
        # The heartbeat in between comes from the broadcast channel (live only), not
        # from the stream: published before this page connected, it is not replayed.
        assert json.loads(two["data"])["event"] == "WORKSPACE_OFFLINE"

        # What a browser does after a drop: reconnect with the last id it saw.
        again = http.client.HTTPConnection(host, port, timeout=10)
        again.request("GET", f"/api/events?since={start}", headers={"Last-Event-ID": one["id"]})
        (three,) = read_sse(again.getresponse(), 1)
        again.close()
        assert json.loads(three["data"])["event"] == "WORKSPACE_OFFLINE"
    finally:
        stalled.close()


def test_heartbeats_come_from_the_channel_newest_per_workspace(board, db, redis_client):
    busy = make_workspace(db, "busy")
    quiet = make_workspace(db, "quiet")
    host, port = board.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/api/events")
    response = conn.getresponse()
    try:
        beats = [
            (EventType.WORKSPACE_HEARTBEAT, busy, {"active_tasks": n, "uptime_seconds": n})
            for n in range(1, 6)
        ]
        beats.append((EventType.TASK_UPDATED, busy, {"current_task": "t", "active_tasks": 5}))
        beats.append((EventType.WORKSPACE_HEARTBEAT, quiet, {"active_tasks": 0}))
        # One transaction: one drain sees them all.
        publish(db, redis_client, beats, per_transaction=len(beats))
        publish(db, redis_client, [(EventType.WORKSPACE_DEGRADED, quiet, {"error_rate": 0.9})])
        # Beats arrive as `beats` messages without an id (a reconnect resumes by the
        # stream position only), the newest per workspace and type in each.
        newest: dict[tuple[str, str], int] = {}
        seen: dict[str, Any] = {}
        while "registry" not in seen or len(newest) < 3:
            (message,) = read_sse(response, 1)
            seen.setdefault(message["event"], message)
            if message["event"] == "beats":
                assert "id" not in message
                for beat in json.loads(message["data"]):
                    if beat["workspace_id"] not in (busy, quiet):
                        continue  # pub/sub is server-wide: another test run's beat
                    newest[(beat["workspace_id"], beat["event"])] = beat["payload"]["active_tasks"]
        assert newest == {
            (busy, "WORKSPACE_HEARTBEAT"): 5,
            (busy, "TASK_UPDATED"): 5,
            (quiet, "WORKSPACE_HEARTBEAT"): 0,
        }
        assert json.loads(seen["registry"]["data"])["event"] == "WORKSPACE_DEGRADED"
    finally:
        conn.close()


def test_channel_beats_keep_the_newest_per_workspace_and_type(redis_client):
    beats = ChannelBeats(redis_client)
    beats.open()
    try:
        ws = str(uuid.uuid4())
        pipe = redis_client.pipeline()
        for n in range(5):
            body = {"event": "WORKSPACE_HEARTBEAT", "workspace_id": ws, "payload": {"n": n}}
            pipe.publish(BROADCAST_CHANNEL, json.dumps(body))
        pipe.publish(
            BROADCAST_CHANNEL,
            json.dumps({"event": "WORKSPACE_ONLINE", "workspace_id": ws, "payload": {}}),
        )
        pipe.publish(BROADCAST_CHANNEL, "not json")
        pipe.publish(BROADCAST_CHANNEL, json.dumps({"event": "TASK_UPDATED", "workspace_id": 7}))
        pipe.execute()
        time.sleep(0.3)  # delivered to our socket
        # Pub/sub is server-wide: other test runs' beats may arrive too.
        (latest,) = [b for b in beats.drain() if b["workspace_id"] == ws]
        assert latest["workspace_id"] == ws and latest["payload"] == {"n": 4}
        assert latest["event"] == "WORKSPACE_HEARTBEAT"
        assert [b for b in beats.drain() if b["workspace_id"] == ws] == []
    finally:
        beats.close()


def request(
    board: BoardServer,
    path: str,
    host: str | None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One request with exactly the Host header given (None: no Host header at all)."""
    conn = http.client.HTTPConnection(*board.server_address[:2], timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        streaming = response.headers.get("Content-Type", "").startswith("text/event-stream")
        body = b"" if streaming or method == "HEAD" else response.read()
        return response.status, response, body
    finally:
        conn.close()


def test_foreign_host_is_refused_on_every_endpoint(board, db, redis_client):
    ws = make_workspace(db, "secret-name", status="failed")
    host, port = board.server_address[:2]
    since = stream_head(redis_client).token()
    endpoints = [
        "/",
        "/index.html",
        "/board.js",
        "/board.css",
        "/api/snapshot",
        "/api/snapshot?limit=1",
        "/api/snapshot?changed_since=2020-01-01T00:00:00Z",
        f"/api/workspaces/{ws}",
        "/api/workspaces/not-an-id",
        "/api/events",
        f"/api/events?since={since}",
        "/no-such-page",
    ]
    foreign = [
        "evil.example",
        f"evil.example:{port}",
        f"{host}.evil.example:{port}",
        f"{host}:{port + 1}",
        f"{host}",  # port 80 implied: not the board's port
        "",
        None,
    ]
    for path in endpoints:
        for name in foreign:
            status, _, body = request(board, path, name)
            assert status == 403, (path, name, status)
            assert b"secret-name" not in body
            assert b"Host" in body  # says why
        for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS", "TRACE", "BREW"):
            assert request(board, path, "evil.example", method)[0] == 403, (path, method)
            assert request(board, path, f"{host}:{port}", method)[0] == 405, (path, method)

    # The board's own address and, for a loopback bind, the loopback names.
    for name in (f"{host}:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        status, _, body = request(board, "/api/snapshot", name)
        assert status == 200, name
        assert json.loads(body)["workspaces"][0]["name"] == "secret-name"
    status, response, _ = request(board, f"/api/events?since={since}", f"localhost:{port}")
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")


def test_host_check_for_wildcard_binds_and_named_hosts():
    wildcard = HostCheck("0.0.0.0", 8765, ["board.internal"])
    assert wildcard.allows("10.1.2.3:8765")  # an IP literal cannot be rebound
    assert wildcard.allows("localhost:8765")
    assert wildcard.allows("Board.Internal.:8765")
    assert not wildcard.allows("evil.example:8765")
    assert not wildcard.allows("10.1.2.3:8766")
    assert not wildcard.allows("10.1.2.3:x")
    assert not wildcard.allows("[::1")
    specific = HostCheck("192.0.2.7", 80)
    assert specific.allows("192.0.2.7")  # port 80 implied
    assert not specific.allows("localhost")  # not a loopback bind
    assert not specific.allows("192.0.2.8")


def test_snapshot_pages_problems_first_and_is_gzipped(board, db):
    names = {}
    for status in ("online", "failed", "offline", "degraded", "awaiting_agent", "hibernated"):
        names[status] = make_workspace(db, f"ws-{status}", status=status)
    make_workspace(db, "ws-removed", status="removed")
    order = ["ws-failed", "ws-offline", "ws-degraded", "ws-awaiting_agent", "ws-hibernated"]
    order.append("ws-online")

    whole = get_json(board.url + "api/snapshot")
    assert [w["name"] for w in whole["workspaces"]] == order
    assert whole["next"] is None
    assert whole["total"] == 6
    assert whole["counts"] == {s: 1 for s in names}

    first = get_json(board.url + "api/snapshot?limit=4")
    assert [w["name"] for w in first["workspaces"]] == order[:4]
    assert first["position"] and first["next"]
    second = get_json(board.url + f"api/snapshot?limit=4&after={first['next']}")
    assert [w["name"] for w in second["workspaces"]] == order[4:]
    assert second["next"] is None
    assert "position" not in second  # the first page's position covers the whole load

    seed_fleet(db, {"online": 50})
    wire = request(
        board,
        "/api/snapshot",
        f"127.0.0.1:{board.server_address[1]}",
        headers={"Accept-Encoding": "gzip, br"},
    )
    status, response, body = wire
    assert status == 200 and response.headers["Content-Encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(body))["workspaces"]) == 56
    plain = request(board, "/api/snapshot", f"127.0.0.1:{board.server_address[1]}")
    assert plain[1].headers.get("Content-Encoding") is None
    assert len(plain[2]) > 3 * len(body)


def test_later_pages_come_from_one_read_never_older_than_the_first_page(board, db):
    seeded = seed_fleet(db, {"offline": 3, "online": 6})
    watched = seeded["online"][-1]  # on the last page

    def load(first: dict[str, Any]) -> list[dict[str, Any]]:
        rows, following = list(first["workspaces"]), first["next"]
        while following:
            page = get_json(board.url + f"api/snapshot?limit=3&after={following}")
            rows += page["workspaces"]
            following = page["next"]
        return rows

    def status_of(rows: list[dict[str, Any]], workspace_id: str) -> str:
        return next(w["status"] for w in rows if w["id"] == workspace_id)

    first = get_json(board.url + "api/snapshot?limit=3")
    second = get_json(board.url + f"api/snapshot?limit=3&after={first['next']}")
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET status = 'degraded' WHERE id = :id"), watched)

    # A load that began before the change goes on from the read its second page made
    # (the change reaches it as an event) ...
    rest = get_json(board.url + f"api/snapshot?limit=3&after={second['next']}")
    assert status_of(rest["workspaces"], watched["id"]) == "online"
    # ... a load that begins after it is not served that older read.
    again = load(get_json(board.url + "api/snapshot?limit=3"))
    assert len(again) == 9 and status_of(again, watched["id"]) == "degraded"
    # Problems first, by name: the same order as the whole fleet in one page.
    whole = get_json(board.url + "api/snapshot")["workspaces"]
    assert [w["id"] for w in again] == [w["id"] for w in whole]


def test_snapshot_refuses_bad_parameters_clearly(board, db):
    make_workspace(db, "only", status="online")
    for query, says in (
        ("limit=0", "limit must be between 1 and"),
        ("limit=abc", "is not a whole number"),
        ("limit=999999", "limit must be between 1 and"),
        ("limit=5&after=garbage!", "is not a page cursor"),
        ("changed_since=yesterday", "is not an RFC 3339 time"),
        ("changed_since=2020-01-01T00:00:00", "has no time zone"),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(board.url + "api/snapshot?" + query, timeout=10)
        assert refused.value.code == 400, query
        assert says in json.loads(refused.value.read())["error"], query
    # Nothing changed: the fleet is still served whole.
    assert [w["name"] for w in get_json(board.url + "api/snapshot")["workspaces"]] == ["only"]


def test_changed_since_returns_only_status_changes_removals_included(board, db):
    old = make_workspace(db, "old", status="online")
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET status_changed_at = now() - interval '1 hour' WHERE id = :id"
            ),
            {"id": old},
        )
    make_workspace(db, "new", status="provisioning")
    gone = make_workspace(db, "gone", status="online")
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET status = 'removed' WHERE id = :id"), {"id": gone})
    since = get_json(board.url + "api/snapshot")["server_time"]
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET status = 'paused' WHERE id = :id"), {"id": old})
    delta = get_json(board.url + f"api/snapshot?changed_since={since}")
    assert [(w["name"], w["status"]) for w in delta["workspaces"]] == [("old", "paused")]
    earlier = get_json(board.url + "api/snapshot?changed_since=2020-01-01T00:00:00Z")
    assert {w["name"]: w["status"] for w in earlier["workspaces"]} == {
        "old": "paused",
        "new": "provisioning",
        "gone": "removed",
    }


# ---------------------------------------------------------------------------
# The page


def test_tile_changes_colour_on_degrading_heartbeat_and_offline_sweep(page, db, worker, celery_app):
    created = celery_app.send_task(
        "registry.create_workspace", args=[{"name": "degrade-me"}], queue="registry"
    ).get(timeout=20)
    ws, token = created["workspace_id"], created["auth_token"]  # injected by the provisioner
    celery_app.send_task(
        "registry.register",
        args=[
            {"id": ws, "agent_card": {"name": "d"}, "delivery_mode": "poll", "auth_token": token}
        ],
        queue="registry",
    ).get(timeout=20)
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
    # The event list is redrawn a few times a second (not per event): wait for it.
    page.wait_for_function(
        "document.querySelector('#events').textContent"
        ".includes('offline (liveness_expired, was degraded)')",
        timeout=5000,
    )
    feed = page.inner_text("#events")
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
        # Problems first (grouped by status), then by name within a status.
        names = page.eval_on_selector_all(".tile .name", "els => els.map(e => e.textContent)")
        assert names == ["b-degraded", "c-hibernated", "a-online"]
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
        assert names == ["b-degraded", "c-hibernated", "a-online", "aa-new"]

        publish(db, redis_client, [(EventType.WORKSPACE_REMOVED, online, {})])
        page.wait_for_selector(f'.tile[data-id="{online}"]', state="detached", timeout=5000)
        assert page.inner_text("#total") == "3"
    finally:
        context.close()


def test_page_reloads_the_fleet_after_a_redis_restart(browser, db):
    ws = make_workspace(db, "survivor", status="online")
    with private_redis() as redis_server:
        server = BoardServer("127.0.0.1", 0, db, redis_server.client())
        server.start()
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
            server.stop()


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


# ---------------------------------------------------------------------------
# The page at 5,000 workspaces

FAILED_RGB = (219, 39, 119)  # board.css --failed
OFFLINE_RGB_TUPLE = (239, 68, 68)


@pytest.fixture
def fleet_5000(db) -> dict[str, list[dict[str, str]]]:
    return seed_fleet(db, FLEET_5000)


@contextmanager
def opened(browser: Browser, url: str) -> Iterator[Page]:
    """A page on `url`, live; fails the test on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(url)
        page.wait_for_selector('#link[data-state="live"]', timeout=20_000)
        yield page
    finally:
        context.close()
    assert errors == [], errors


def shown(page: Page) -> list[tuple[str, str]]:
    """(status, name) of every tile in the DOM, in order."""
    pairs = page.eval_on_selector_all(
        ".tile", "els => els.map(e => [e.dataset.status, e.querySelector('.name').textContent])"
    )
    return [(status, name) for status, name in pairs]


def groups(page: Page) -> list[str]:
    return page.eval_on_selector_all("#tiles .group", "els => els.map(e => e.dataset.status)")


def chip_count(page: Page, status: str) -> str:
    return page.inner_text(f'#legend .chip[data-status="{status}"] b')


def map_colours(page: Page) -> dict[str, Any]:
    """How many cells of the map are painted in each colour ("r,g,b")."""
    return page.evaluate(
        """() => {
            const {size, cols} = mapLayout;
            const rows = Math.ceil(everyone.length / cols);
            const width = cols * size;
            const data = document.getElementById("map").getContext("2d")
                .getImageData(0, 0, width, rows * size).data;
            const colours = {};
            for (let i = 0; i < everyone.length; i += 1) {
                const at = ((Math.floor(i / cols) * size) * width + (i % cols) * size) * 4;
                const key = `${data[at]},${data[at + 1]},${data[at + 2]}`;
                colours[key] = (colours[key] || 0) + 1;
            }
            return {cells: everyone.length, size, colours};
        }"""
    )


def test_5000_problems_first_with_counts_and_a_map(browser, board, fleet_5000):
    with opened(browser, board.url) as page:
        assert page.inner_text("#total") == "5000"
        for status, count in FLEET_5000.items():
            assert chip_count(page, status) == str(count), status
        # Problems first: the 12 failed, then the offline ones, at the top of the list.
        tiles = shown(page)
        assert [s for s, _ in tiles[:12]] == ["failed"] * 12
        assert tiles[12][0] == "offline"
        assert [n for _, n in tiles[:12]] == sorted(w["name"] for w in fleet_5000["failed"])
        assert groups(page)[:2] == ["failed", "offline"]
        assert page.inner_text('#tiles .group[data-status="failed"] b') == "12"
        # Virtualised: a screenful of tiles in the DOM, not 5,000.
        assert 12 < len(tiles) < 150

        # The map: one cell per workspace, problems first, coloured by status.
        cells = map_colours(page)
        assert cells["cells"] == 5000
        assert cells["colours"]["219,39,119"] == 12
        assert cells["colours"]["239,68,68"] == 600
        assert cells["colours"]["34,197,94"] == 3000

        # Hover the first cell (the map is in name order, stable) for its name, click
        # it for the details.
        first = min((w for rows in fleet_5000.values() for w in rows), key=lambda w: w["name"])
        page.hover("#map", position={"x": 1, "y": 1})
        page.wait_for_selector("#map-tip:not([hidden])")
        assert (
            page.inner_text("#map-tip") == f"{first['name']} · {first['status'].replace('_', ' ')}"
        )
        page.click("#map", position={"x": 1, "y": 1})
        page.wait_for_function(
            "(id) => document.getElementById('details-facts').textContent.includes(id)",
            arg=first["id"],
        )
        assert page.inner_text("#details-name") == first["name"]
        assert f"ws={first['id']}" in page.url
        assert page.get_attribute(f'.tile[data-id="{first["id"]}"]', "class") == ("tile selected")


def test_the_event_list_keeps_the_newest_100_and_holds_a_panel_of_rows(
    browser, board, db, redis_client
):
    ws = make_workspace(db, "chatty", status="online")
    events = [
        (EventType.WORKSPACE_DEGRADED, ws, {"error_rate": 0.9, "sample_error": f"event {n:03d}"})
        for n in range(150)
    ]
    with opened(browser, board.url) as page:
        publish(db, redis_client, events, per_transaction=10)
        newest = "document.querySelector('#events li .gist')?.textContent.includes('event 149')"
        page.wait_for_function(newest, timeout=10_000)
        # A panel's height of rows in the page, not one per event; the list is as tall
        # as the 100 kept.
        rows = page.eval_on_selector_all("#events li", "rows => rows.length")
        assert 3 <= rows <= 20
        assert page.eval_on_selector("#events", "list => list.style.height") == "6000px"
        # Scrolled to the end: the oldest kept is the 100th newest.
        page.eval_on_selector("#events-scroll", "box => { box.scrollTop = box.scrollHeight; }")
        page.wait_for_function(
            """[...document.querySelectorAll('#events li .gist')]
               .some((gist) => gist.textContent.includes('event 050'))""",
            timeout=5000,
        )
        gists = page.eval_on_selector_all("#events li .gist", "gists => gists.map(g => g.title)")
        assert not any("event 049" in gist for gist in gists)


def test_5000_search_filters_and_a_shareable_url(browser, board, fleet_5000):
    with opened(browser, board.url) as page:
        target = fleet_5000["degraded"][123]
        page.fill("#search", target["name"])
        page.wait_for_function("document.querySelectorAll('.tile').length === 1")
        assert shown(page) == [("degraded", target["name"])]
        assert f"q={target['name']}" in page.url

        by_id = fleet_5000["online"][2345]
        page.fill("#search", by_id["id"][:13])
        page.wait_for_function(
            "(name) => document.querySelector('.tile .name').textContent === name",
            arg=by_id["name"],
        )
        assert shown(page) == [("online", by_id["name"])]

        page.fill("#search", "")
        page.click('#legend .chip[data-status="offline"]')
        page.wait_for_function("[...document.querySelectorAll('#tiles .group')].length === 1")
        assert groups(page) == ["offline"]
        assert {s for s, _ in shown(page)} == {"offline"}
        assert "status=offline" in page.url
        assert page.get_attribute('#legend .chip[data-status="offline"]', "aria-pressed") == "true"

        page.click('#legend .chip[data-status="failed"]')
        page.wait_for_function("document.querySelectorAll('#tiles .group').length === 2")
        assert groups(page) == ["failed", "offline"]

        page.select_option("#runtime", "crewai")
        expected = {
            s: sum(w["runtime"] == "crewai" for w in fleet_5000[s]) for s in ("failed", "offline")
        }
        page.wait_for_function(
            "[...document.querySelectorAll('.tile .runtime')].every(e => e.textContent === 'crewai')"
        )
        assert page.inner_text('#tiles .group[data-status="offline"] b') == (
            f"{expected['offline']} of 600"
        )
        # The counts stay the fleet's: filters choose what is listed, not what is counted.
        assert chip_count(page, "offline") == "600"
        shared = page.url
        assert "runtime=crewai" in shared and "status=failed%2Coffline" in shared

    # The same view, opened from the shared URL.
    with opened(browser, shared) as again:
        again.wait_for_function("document.querySelectorAll('#tiles .group').length === 2")
        assert groups(again) == ["failed", "offline"]
        assert again.input_value("#runtime") == "crewai"
        assert {s for s, _ in shown(again)} <= {"failed", "offline"}
        again.click("#clear")
        # Every runtime again (the top of the list is still the failed and offline ones).
        again.wait_for_function(
            "new Set([...document.querySelectorAll('.tile .runtime')].map(e => e.textContent)).size > 1"
        )
        assert (
            again.get_attribute('#legend .chip[data-status="offline"]', "aria-pressed") == "false"
        )
        assert again.url == board.url


def test_5000_live_changes_move_tiles_and_keep_counts(browser, board, db, redis_client, fleet_5000):
    with opened(browser, board.url) as page:
        changes = []
        expected = dict(FLEET_5000)
        # 100 status changes in batches, as a sweep would commit them.
        for n, ws in enumerate(fleet_5000["online"][:100]):
            event, status = (
                (EventType.WORKSPACE_OFFLINE, "offline")
                if n % 2
                else (EventType.WORKSPACE_PROVISION_FAILED, "failed")
            )
            changes.append((event, ws["id"], {"n": n}))
            expected["online"] -= 1
            expected[status] += 1
        publish(db, redis_client, changes, per_transaction=10)
        page.wait_for_function(
            f"""document.querySelector('#legend .chip[data-status="failed"] b').textContent === '{expected["failed"]}'""",
            timeout=10_000,
        )
        for status, count in expected.items():
            assert chip_count(page, status) == str(count), status
        assert page.inner_text("#total") == "5000"
        # The newly failed are in the failed group at the top, by name.
        tiles = shown(page)
        failed_names = sorted(
            [w["name"] for w in fleet_5000["failed"]]
            + [w["name"] for n, w in enumerate(fleet_5000["online"][:100]) if n % 2 == 0]
        )
        listed = [name for status, name in tiles if status == "failed"]
        assert len(listed) > 12
        assert listed == failed_names[: len(listed)]
        assert page.inner_text('#tiles .group[data-status="failed"] b') == str(expected["failed"])
        # The map repainted just those cells (drawn in the same frame as the counts).
        colours = map_colours(page)["colours"]
        assert colours["219,39,119"] == expected["failed"]
        assert colours["239,68,68"] == expected["offline"]
        assert colours["34,197,94"] == expected["online"]


def test_5000_filters_dim_the_map_and_narrowed_lists_follow_live_changes(
    browser, board, db, redis_client, fleet_5000
):
    crewai = {s: [w for w in ws if w["runtime"] == "crewai"] for s, ws in fleet_5000.items()}
    offline_red = "239,68,68"
    with opened(browser, board.url) as page:
        page.select_option("#runtime", "crewai")
        page.click('#legend .chip[data-status="offline"]')
        head = '#tiles .group[data-status="offline"] b'
        page.wait_for_function(
            "([sel, text]) => document.querySelector(sel)?.textContent === text",
            arg=[head, f"{len(crewai['offline'])} of 600"],
        )
        # Only the cells the filters let through are in full colour.
        assert map_colours(page)["colours"].get(offline_red) == len(crewai["offline"])

        # Ten crewai workspaces and ten of other runtimes go offline: the narrowed list
        # takes the first ten only, the map lights exactly those cells.
        movers = crewai["online"][:10]
        others = [w for w in fleet_5000["online"] if w["runtime"] != "crewai"][:10]
        changes = [(EventType.WORKSPACE_OFFLINE, w["id"], {}) for w in movers + others]
        publish(db, redis_client, changes, per_transaction=10)
        page.wait_for_function(
            "([sel, text]) => document.querySelector(sel)?.textContent === text",
            arg=[head, f"{len(crewai['offline']) + 10} of 620"],
            timeout=10_000,
        )
        assert map_colours(page)["colours"].get(offline_red) == len(crewai["offline"]) + 10
        assert {s for s, _ in shown(page)} == {"offline"}

        # A search narrows further, by a mover's name (it moved in under the filters).
        target = movers[0]
        page.fill("#search", target["name"])
        page.wait_for_function("document.querySelectorAll('.tile').length === 1")
        assert shown(page) == [("offline", target["name"])]
        assert map_colours(page)["colours"].get(offline_red) == 1
