"""The board's fleet-insight parts (CONTRACT §13): open incidents above everything else,
live, and a workspace's 24 h status strip when it is opened (headless Chromium)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from ingest_helpers import run_message, run_sweep
from insight_helpers import age, clean_insight, failing, fleet, healthy
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import Engine, text

from gateway.board_serve import BoardServer
from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, SWEEP_INSIGHT_TASK

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("events_stream_broadcasts")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture
def insight_db(db: Engine) -> Iterator[Engine]:
    yield from clean_insight(db)


@pytest.fixture
def board(insight_db: Engine, redis_client: Any) -> Iterator[BoardServer]:
    server = BoardServer("127.0.0.1", 0, insight_db, redis_client)
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


def open_page(browser: Browser, board: BoardServer) -> tuple[Page, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(board.url)
    page.wait_for_selector('#link[data-state="live"]', timeout=10_000)
    return page, errors


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def seed_incident(engine: Engine, signature: str, members: int) -> int:
    with engine.begin() as conn:
        return conn.execute(
            text(
                "INSERT INTO incidents (kind, key, signature, sample_error, members, "
                "peak_members, announced_members) VALUES "
                "('shared_error', :s, :s, :s, :n, :n, :n) RETURNING id"
            ),
            {"s": signature, "n": members},
        ).scalar_one()


def seed_strip(engine: Engine, ws: str) -> None:
    """Online since 30 h ago, offline 6 h ago, online again 4 h ago."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET created_at = now() - interval '2 days' WHERE id = :id"),
            {"id": ws},
        )
        for hours, event, payload in [
            (30, "WORKSPACE_ONLINE", {"recovered_from": "offline"}),
            (6, "WORKSPACE_OFFLINE", {"reason": "liveness_expired", "previous_status": "online"}),
            (4, "WORKSPACE_ONLINE", {"recovered_from": "offline"}),
        ]:
            conn.execute(
                text(
                    "INSERT INTO structure_events (event_type, workspace_id, payload, created_at) "
                    "VALUES (:t, :ws, CAST(:p AS jsonb), now() - make_interval(hours => :h))"
                ),
                {"t": event, "ws": ws, "p": json.dumps(payload), "h": hours},
            )


def test_snapshot_lists_open_incidents_and_the_strip_endpoint(
    board: BoardServer, insight_db: Engine
) -> None:
    open_id = seed_incident(insight_db, "rate limited (<num>)", 12)
    closed = seed_incident(insight_db, "gone", 5)
    age(insight_db, "UPDATE incidents SET resolved_at = now() WHERE id = :id", id=closed)
    first = get_json(f"{board.url}api/snapshot")
    assert [(i["incident_id"], i["members"]) for i in first["incidents"]] == [(open_id, 12)]

    (ws,) = fleet(insight_db, 1)
    seed_strip(insight_db, ws)
    strip = get_json(f"{board.url}api/workspaces/{ws}/strip")
    assert [s["status"] for s in strip["segments"]] == ["online", "offline", "online"]
    assert strip["availability_percent"] == pytest.approx(100 * 22 / 24, abs=0.05)
    for bad, status in (("nope", 400), ("00000000-0000-0000-0000-000000000001", 404)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            get_json(f"{board.url}api/workspaces/{bad}/strip")
        assert refused.value.code == status
        assert "error" in json.loads(refused.value.read())


def test_open_incidents_show_above_everything_and_follow_live_changes(
    browser: Browser, board: BoardServer, insight_db: Engine, celery_app: Any, worker: Any
) -> None:
    seed_incident(insight_db, "disk full on <path>", 7)
    page, errors = open_page(browser, board)
    page.wait_for_selector("#incidents:not([hidden])")
    assert "7 workspaces" in page.inner_text("#incidents")
    panel_y = page.locator("#incidents").bounding_box()["y"]
    assert panel_y < page.locator(".controls").bounding_box()["y"]
    assert panel_y < page.locator(".layout").bounding_box()["y"]

    # A live outage: five workspaces degrade with one cause through the worker.
    ids = fleet(insight_db, 5)
    sent = time.monotonic()
    run_message(
        celery_app,
        HEARTBEAT_BATCH_TASK,
        {"heartbeats": [failing(ws, f"model overloaded (retry {n})") for n, ws in enumerate(ids)]},
    )
    page.wait_for_function(
        "document.querySelector('#incidents').textContent.includes('model overloaded (retry <num>)')",
        timeout=5000,
    )
    assert time.monotonic() - sent < 5
    assert page.locator("#incident-list li").count() == 2

    # It resolves (time moved back): the board drops it, the seeded one stays.
    run_message(celery_app, HEARTBEAT_BATCH_TASK, {"heartbeats": [healthy(ws) for ws in ids]})
    age(
        insight_db,
        "UPDATE incidents SET last_seen_at = now() - interval '1 hour' "
        "WHERE signature LIKE 'model overloaded%'",
    )
    age(
        insight_db,
        "UPDATE incident_signals SET at = at - interval '1 hour'",
    )
    assert run_sweep(celery_app, SWEEP_INSIGHT_TASK)["incidents"] == {"resolved": 1}
    page.wait_for_function(
        "document.querySelectorAll('#incident-list li').length === 1", timeout=5000
    )
    assert "disk full" in page.inner_text("#incidents")
    page.context.close()
    assert errors == []


def test_opening_a_workspace_shows_its_24h_strip(
    browser: Browser, board: BoardServer, insight_db: Engine
) -> None:
    (ws,) = fleet(insight_db, 1)
    seed_strip(insight_db, ws)
    page, errors = open_page(browser, board)
    assert page.locator("#incidents").is_hidden()  # nothing open: no panel
    page.click(f'.tile[data-id="{ws}"]')
    page.wait_for_selector("#strip:not([hidden])")
    shown = page.eval_on_selector_all(
        "#strip-bar .seg[data-status]",
        "segs => segs.map(s => [s.dataset.status, parseFloat(s.style.flexBasis)])",
    )
    assert [status for status, _ in shown] == ["online", "offline", "online"]
    assert [round(width) for _, width in shown] == [75, 8, 17]  # 18 h, 2 h, 4 h of 24
    colours = page.eval_on_selector_all(
        "#strip-bar .seg[data-status]", "segs => segs.map(s => getComputedStyle(s).backgroundColor)"
    )
    assert colours == ["rgb(34, 197, 94)", "rgb(239, 68, 68)", "rgb(34, 197, 94)"]
    assert page.inner_text("#strip-availability") == "91.67% available"
    page.context.close()
    assert errors == []
