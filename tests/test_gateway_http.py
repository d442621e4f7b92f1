"""The gateway's HTTP calls (CONTRACT §11) against real processes.

A real gateway (`molecule-registry gateway --log-level debug` in a subprocess), the
in-process `worker` consuming the test run's Redis broker, real PostgreSQL and Redis;
httpx is the HTTP client. Covered: the exact call sequences of `molecule connect` and
of the workspace runtime, card updates, state, discovery, peers, check-access, a
revoked token refused within the cache period, heartbeat coalescing, and that no token
or Authorization header is ever logged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from gateway_helpers import CONNECT_CARD, RunningGateway, bearer, running_gateway
from ingest_helpers import (
    create_now,
    recorded_events,
    register_now,
    remove_now,
    set_status,
    wait_until,
    workspace,
)
from sqlalchemy import Engine

pytestmark = pytest.mark.integration

RUNTIME_CARD = {"name": "planner", "description": "plans", "version": "0.3.1", "skills": []}


@pytest.fixture(scope="module")
def gateway(
    worker: object, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with running_gateway(test_env, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def heartbeat_seen(engine: Engine, ws: str, after: object) -> bool:
    row = workspace(engine, ws)
    return row.last_heartbeat_at is not None and row.last_heartbeat_at > after


def results_holding(token: str, backend_url: str) -> list[str]:
    backend = redis.Redis.from_url(backend_url)
    try:
        return [
            key.decode()
            for key in backend.scan_iter("celery-task-meta-*")
            if token.encode() in (backend.get(key) or b"")
        ]
    finally:
        backend.close()


def test_molecule_connect_sequence(
    db: Engine, gateway: RunningGateway, test_env: dict[str, str]
) -> None:
    """`molecule connect`: register in poll mode without a URL, then heartbeat every
    interval with the token until a 4xx answer (here: the workspace was removed)."""
    ws = str(uuid.uuid4())
    with gateway.client() as http:
        answer = http.post(
            "/registry/register",
            json={"id": ws, "agent_card": CONNECT_CARD, "delivery_mode": "poll"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "registered"
        assert body["delivery_mode"] == "poll"
        token = body["auth_token"]
        assert set(body) == {"status", "delivery_mode", "auth_token"}
        # The answer was read once and removed: the token is nowhere in the backend.
        assert not results_holding(token, test_env["CELERY_RESULT_BACKEND"])
        row = workspace(db, ws)
        assert (row.status, row.delivery_mode, row.agent_card) == ("online", "poll", CONNECT_CARD)

        for _ in range(3):
            before = workspace(db, ws).last_heartbeat_at
            beat = http.post(
                "/registry/heartbeat",
                json={"workspace_id": ws, "runtime_state": "ok", "uptime_seconds": 0},
                headers=bearer(token),
            )
            assert beat.status_code == 200, beat.text
            assert beat.json() == {"status": "ok"}
            wait_until(lambda b=before: heartbeat_seen(db, ws, b))
        assert workspace(db, ws).status == "online"

        # The operator removes the workspace: its token is revoked, and within the
        # gateway's cache period (≤ 5 s) the next heartbeat is a 4xx, which stops the loop.
        remove_now(ws)
        started = time.monotonic()
        while True:
            beat = http.post(
                "/registry/heartbeat",
                json={"workspace_id": ws, "runtime_state": "ok", "uptime_seconds": 0},
                headers=bearer(token),
            )
            if beat.status_code >= 400:
                break
            assert time.monotonic() - started < 5.5, "a revoked token was accepted after 5 s"
            time.sleep(0.2)
        assert beat.status_code == 401
        assert beat.json() == {"error": "missing or invalid workspace auth token"}


def test_connect_heartbeats_are_relayed_as_sent_and_follow_the_transition_table(
    db: Engine, gateway: RunningGateway
) -> None:
    """The gateway relays `runtime_state` as sent; the worker applies CONTRACT §4.2 as the
    original does: degraded → online needs an empty runtime_state, so `molecule
    connect`'s "ok" keeps a degraded workspace degraded, and an empty one recovers it."""
    ws = str(uuid.uuid4())
    token = register_now(ws, card=CONNECT_CARD)["auth_token"]
    set_status(db, ws, "degraded")
    with gateway.client() as http:
        for state, expected in (("ok", "degraded"), ("", "online")):
            beat = http.post(
                "/registry/heartbeat",
                json={"workspace_id": ws, "runtime_state": state, "uptime_seconds": 1},
                headers=bearer(token),
            )
            assert beat.status_code == 200
            wait_until(lambda expected=expected: workspace(db, ws).status == expected, timeout=5)


def test_workspace_runtime_sequence(db: Engine, gateway: RunningGateway) -> None:
    """The workspace runtime: register once with its URL, keep the token, then heartbeat
    with the five fields, runtime_metadata and the bearer."""
    ws = str(uuid.uuid4())
    with gateway.client() as http:
        answer = http.post(
            "/registry/register",
            json={"id": ws, "url": "http://localhost:8000", "agent_card": RUNTIME_CARD},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["delivery_mode"] == "push"
        token = answer.json()["auth_token"]

        beat = http.post(
            "/registry/heartbeat",
            json={
                "workspace_id": ws,
                "error_rate": 0.25,
                "sample_error": "timeout calling tool",
                "active_tasks": 2,
                "uptime_seconds": 3600,
                "current_task": "summarise the report",
                "runtime_metadata": {"capabilities": {"status_mgmt": False}},
            },
            headers=bearer(token),
        )
        assert beat.status_code == 200, beat.text
        wait_until(lambda: workspace(db, ws).active_tasks == 2)
        row = workspace(db, ws)
        assert row.last_error_rate == pytest.approx(0.25)
        assert row.last_sample_error == "timeout calling tool"
        assert row.uptime_seconds == 3600
        assert row.current_task == "summarise the report"
        assert row.runtime_metadata == {"capabilities": {"status_mgmt": False}}

        # A restart registers again with the token it holds: no new token is issued.
        again = http.post(
            "/registry/register",
            json={"id": ws, "url": "http://localhost:8000", "agent_card": RUNTIME_CARD},
            headers=bearer(token),
        )
        assert again.status_code == 200, again.text
        assert again.json() == {"status": "registered", "delivery_mode": "push"}

        # Without its token the same registration is a hijack attempt: 401 at the edge.
        hijack = http.post(
            "/registry/register",
            json={"id": ws, "url": "http://localhost:8000", "agent_card": {"name": "evil"}},
        )
        assert hijack.status_code == 401
        assert workspace(db, ws).agent_card == RUNTIME_CARD

    # Nothing the gateway logged, at debug level, shows a token or the header.
    log = gateway.process.log()
    assert token not in log
    assert "authorization" not in log.lower()
    assert "bearer" not in log.lower()


def test_registration_the_worker_refuses_is_relayed_as_400(
    db: Engine, gateway: RunningGateway
) -> None:
    ws = str(uuid.uuid4())
    with gateway.client() as http:
        metadata = http.post(
            "/registry/register",
            json={"id": ws, "url": "http://169.254.169.254/latest", "agent_card": RUNTIME_CARD},
        )
        assert metadata.status_code == 400
        assert metadata.json()["error"].startswith("url:")
        assert "169.254" in metadata.json()["error"]

        missing = http.post("/registry/register", json={"id": ws, "agent_card": RUNTIME_CARD})
        assert missing.status_code == 400
        assert missing.json()["error"] == "url is required for push-mode workspaces"


def test_update_card(db: Engine, gateway: RunningGateway) -> None:
    ws = str(uuid.uuid4())
    token = register_now(ws, card=CONNECT_CARD)["auth_token"]
    card = {**CONNECT_CARD, "version": "1.1.0"}
    with gateway.client() as http:
        answer = http.post(
            "/registry/update-card",
            json={"workspace_id": ws, "agent_card": card},
            headers=bearer(token),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "updated"}
        assert workspace(db, ws).agent_card == card
        assert ("AGENT_CARD_UPDATED", {"agent_card": card}) in recorded_events(db, ws)

        bad_url = http.post(
            "/registry/update-card",
            json={"workspace_id": ws, "agent_card": {**card, "url": "http://10.0.0.5/"}},
            headers=bearer(token),
        )
        assert bad_url.status_code == 400
        assert bad_url.json()["error"].startswith("agent_card.url:")
        assert workspace(db, ws).agent_card == card

        stranger = http.post(
            "/registry/update-card", json={"workspace_id": ws, "agent_card": {"name": "x"}}
        )
        assert stranger.status_code == 401


def test_state(db: Engine, gateway: RunningGateway) -> None:
    ws = str(uuid.uuid4())
    token = register_now(ws, card=CONNECT_CARD)["auth_token"]
    with gateway.client() as http:
        state = http.get(f"/workspaces/{ws}/state", headers=bearer(token))
        assert state.status_code == 200
        assert state.json() == {
            "workspace_id": ws,
            "status": "online",
            "paused": False,
            "deleted": False,
        }
        set_status(db, ws, "paused")
        assert http.get(f"/workspaces/{ws}/state", headers=bearer(token)).json()["paused"] is True

        assert http.get(f"/workspaces/{ws}/state").status_code == 401

        unknown = str(uuid.uuid4())
        gone = http.get(f"/workspaces/{unknown}/state")
        assert gone.status_code == 404
        assert gone.json() == {"workspace_id": unknown, "deleted": True}

        # Removed: its tokens are revoked, and its agent still learns it was deleted.
        remove_now(ws)
        removed = http.get(f"/workspaces/{ws}/state", headers=bearer(token))
        assert removed.status_code == 404
        assert removed.json() == {"workspace_id": ws, "deleted": True}


def _family() -> dict[str, tuple[str, str]]:
    """parent P, children A and B, grandchild C (under A), and an unrelated root X."""
    made: dict[str, tuple[str, str]] = {}
    for name, under in (("P", None), ("A", "P"), ("B", "P"), ("C", "A"), ("X", None)):
        parent = {"parent_id": made[under][0]} if under else {}
        created = create_now(name.lower(), **parent)  # the provisioner holds its token
        ws, token = created["workspace_id"], created["auth_token"]
        register_now(ws, card={"name": name.lower()}, auth_token=token)
        made[name] = (ws, token)
    return made


def test_discover(db: Engine, gateway: RunningGateway) -> None:
    family = _family()
    (a, a_token), (b, _), (x, _) = family["A"], family["B"], family["X"]
    register_now(
        b,
        card={"name": "b"},
        url="http://localhost:8100",
        delivery_mode="push",
        auth_token=family["B"][1],
    )
    with gateway.client() as http:
        found = http.get(
            f"/registry/discover/{b}", headers={"X-Workspace-ID": a, **bearer(a_token)}
        )
        assert found.status_code == 200, found.text
        assert found.json() == {"id": b, "url": "http://localhost:8100", "name": "b"}

        no_caller = http.get(f"/registry/discover/{b}", headers=bearer(a_token))
        assert no_caller.status_code == 400
        assert no_caller.json() == {"error": "X-Workspace-ID: header is required"}

        wrong_token = http.get(
            f"/registry/discover/{b}", headers={"X-Workspace-ID": a, **bearer("nope")}
        )
        assert wrong_token.status_code == 401

        unrelated = http.get(
            f"/registry/discover/{x}", headers={"X-Workspace-ID": a, **bearer(a_token)}
        )
        assert unrelated.status_code == 403
        assert unrelated.json() == {"error": "not allowed to communicate with this workspace"}

        unknown = http.get(
            f"/registry/discover/{uuid.uuid4()}",
            headers={"X-Workspace-ID": a, **bearer(a_token)},
        )
        assert unknown.status_code == 404


def test_peers(db: Engine, gateway: RunningGateway) -> None:
    family = _family()
    a, a_token = family["A"]
    with gateway.client() as http:
        answer = http.get(f"/registry/{a}/peers", headers=bearer(a_token))
        assert answer.status_code == 200, answer.text
        peers = {peer["id"]: peer for peer in answer.json()}
        assert set(peers) == {family["P"][0], family["B"][0], family["C"][0]}
        child = peers[family["C"][0]]
        assert set(child) == {
            "id",
            "name",
            "status",
            "url",
            "parent_id",
            "active_tasks",
            "agent_card",
            "tier",
        }
        assert child["parent_id"] == a

        assert http.get(f"/registry/{a}/peers").status_code == 401
        assert http.get(f"/registry/{uuid.uuid4()}/peers").status_code == 404


def test_check_access(db: Engine, gateway: RunningGateway) -> None:
    family = _family()
    with gateway.client() as http:
        allowed = http.post(
            "/registry/check-access",
            json={"caller_id": family["C"][0], "target_id": family["P"][0]},
        )
        assert allowed.status_code == 200
        assert allowed.json() == {"allowed": True}
        denied = http.post(
            "/registry/check-access",
            json={"caller_id": family["A"][0], "target_id": family["X"][0]},
        )
        assert denied.json() == {"allowed": False}
        bad = http.post("/registry/check-access", json={"caller_id": "me"})
        assert bad.status_code == 400
        assert "caller_id" in bad.json()["error"]
        assert "target_id: is required" in bad.json()["error"]


def test_concurrent_heartbeats_travel_in_few_batches(db: Engine, gateway: RunningGateway) -> None:
    """Heartbeats arriving together are one registry.heartbeat_batch message, and each
    caller is answered once its batch is in the broker."""
    workspaces = [str(uuid.uuid4()) for _ in range(40)]
    tokens = {ws: register_now(ws, card={"name": "w"})["auth_token"] for ws in workspaces}
    batches_before = gateway.process.count(r"published a heartbeat batch of")
    answers: list[int] = []
    start = threading.Barrier(len(workspaces))

    def beat(ws: str) -> None:
        with gateway.client() as http:
            start.wait()
            answer = http.post(
                "/registry/heartbeat",
                json={"workspace_id": ws, "active_tasks": 7},
                headers=bearer(tokens[ws]),
            )
            answers.append(answer.status_code)

    threads = [threading.Thread(target=beat, args=(ws,)) for ws in workspaces]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * len(workspaces)
    wait_until(lambda: all(workspace(db, ws).active_tasks == 7 for ws in workspaces))
    batches = gateway.process.count(r"published a heartbeat batch of") - batches_before
    assert 1 <= batches < len(workspaces)


def test_broker_down_is_503_with_retry_after(
    db: Engine, test_env: dict[str, str], tmp_path
) -> None:
    """A broker that cannot be reached: the heartbeat is not acknowledged (503, try again)."""
    from gateway_helpers import free_port

    dead_broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    with (
        running_gateway(test_env, tmp_path, CELERY_BROKER_URL=dead_broker) as gateway,
        gateway.client() as http,
    ):
        beat = http.post("/registry/heartbeat", json={"workspace_id": str(uuid.uuid4())})
        register = http.post(
            "/registry/register",
            json={"id": str(uuid.uuid4()), "agent_card": {"name": "a"}, "delivery_mode": "poll"},
        )
    for answer in (beat, register):
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": "the registry's broker is unavailable"}
        assert int(answer.headers["retry-after"]) > 0


def test_demo_agents_over_http(db: Engine, gateway: RunningGateway, test_env: dict[str, str]):
    """`demo --via http`: the simulated agents' client registers and heartbeats through
    the gateway, and maps its refusals to the client's errors."""
    from molecule_registry_client import RegistryClient, RegistryRefused
    from molecule_registry_demo.simulator.http_client import HttpRegistryClient

    admin = RegistryClient(
        test_env["CELERY_BROKER_URL"], result_backend=test_env["CELERY_RESULT_BACKEND"]
    )
    client = HttpRegistryClient(gateway.url, admin)
    try:
        ws = str(uuid.uuid4())
        created = client.create_workspace("sim", id=ws)  # as the provisioner: the queue
        token = client.register(
            ws, {"name": "sim"}, delivery_mode="poll", auth_token=created["auth_token"]
        )
        assert client.register(ws, {"name": "sim"}, delivery_mode="poll", auth_token=token) == token
        client.heartbeat(ws, token, active_tasks=3, current_task=None, uptime_seconds=9)
        wait_until(lambda: workspace(db, ws).active_tasks == 3)
        with pytest.raises(RegistryRefused) as refused:
            client.heartbeat(ws, "not-the-token")
        assert refused.value.status == "unauthorized"
        with pytest.raises(RegistryRefused) as rejected:
            client.heartbeat(ws, token, active_tasks=-1)
        assert rejected.value.status == "rejected"
        assert rejected.value.error.startswith("active_tasks:")
    finally:
        client.close()


def test_gateway_stops_promptly_on_sigterm(db: Engine, test_env: dict[str, str], tmp_path):
    """SIGTERM (an operator, a supervisor): the gateway publishes what it holds and exits
    well within a supervisor's grace period; every publisher thread ends."""
    import signal

    with running_gateway(test_env, tmp_path) as gateway:
        with gateway.client() as http:
            beat = http.post("/registry/heartbeat", json={"workspace_id": str(uuid.uuid4())})
            assert beat.status_code == 200
        started = time.monotonic()
        gateway.process.signal_group(signal.SIGTERM)
        # uvicorn ends a graceful shutdown by re-raising the signal: -SIGTERM.
        assert gateway.process.proc.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
        assert "Application shutdown complete" in gateway.process.log()


def test_two_gateways_side_by_side(
    db: Engine, gateway: RunningGateway, test_env: dict[str, str], tmp_path
) -> None:
    """No gateway holds state another needs: register through one, carry on through the
    other; an unknown workspace's heartbeat is accepted by either (the worker refuses it)."""
    with running_gateway(test_env, tmp_path) as other, gateway.client() as a, other.client() as b:
        ws = str(uuid.uuid4())
        token = a.post(
            "/registry/register",
            json={"id": ws, "agent_card": CONNECT_CARD, "delivery_mode": "poll"},
        ).json()["auth_token"]
        beat = b.post(
            "/registry/heartbeat",
            json={"workspace_id": ws, "active_tasks": 4},
            headers=bearer(token),
        )
        assert beat.status_code == 200
        wait_until(lambda: workspace(db, ws).active_tasks == 4)
        card = {**CONNECT_CARD, "version": "2.0.0"}
        updated = b.post(
            "/registry/update-card",
            json={"workspace_id": ws, "agent_card": card},
            headers=bearer(token),
        )
        assert updated.json() == {"status": "updated"}
        assert a.get(f"/workspaces/{ws}/state", headers=bearer(token)).json()["status"] == "online"
        unknown = {"workspace_id": str(uuid.uuid4())}
        assert a.post("/registry/heartbeat", json=unknown).json() == {"status": "ok"}
        assert b.post("/registry/heartbeat", json=unknown).json() == {"status": "ok"}


def test_the_gateway_serves_the_board_at_slash_board(db: Engine, gateway: RunningGateway) -> None:
    """One web stack: the fleet board is mounted at /board on the gateway, outside the
    API's edge rules (a browser sends no org header), still behind its Host check."""
    ws = str(uuid.uuid4())
    register_now(ws, card={"name": "on-the-board"})
    with gateway.client() as http:
        page = http.get("/board/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        snapshot = http.get("/board/api/snapshot")
        assert snapshot.status_code == 200
        assert ws in snapshot.text
        assert "x-ratelimit-limit" not in snapshot.headers
        foreign = http.get("/board/api/snapshot", headers={"Host": "evil.example:80"})
        assert foreign.status_code == 403
        # The API beside it keeps its edge rules.
        api = http.get(f"/workspaces/{ws}/state")
        assert "x-ratelimit-limit" in api.headers


def test_one_gateway_process_answers_http_and_serves_the_canvas_websocket(
    db: Engine, worker: object, test_env: dict[str, str], tmp_path: Path
) -> None:
    """The original platform end to end on one `molecule-registry gateway`: a canvas
    follows /ws while an agent registers over HTTP; the frame carries the new status and
    a position, and resuming from that position replays nothing already seen. (A
    gateway of its own: the `db` fixture restarts event ids, which no real registry
    does, and a reader that has seen higher ids would take the new ones as seen.)"""

    with running_gateway(test_env, tmp_path) as gateway:
        _canvas_follows_a_registration(gateway)


def _canvas_follows_a_registration(gateway: RunningGateway) -> None:
    import json

    from websockets.sync.client import connect

    ws_url = gateway.url.replace("http://", "ws://") + "/ws"
    ws = str(uuid.uuid4())
    with connect(ws_url, open_timeout=10) as canvas:
        with gateway.client() as http:
            answer = http.post(
                "/registry/register",
                json={"id": ws, "agent_card": CONNECT_CARD, "delivery_mode": "poll"},
            )
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 20
        frame: dict = {}
        while time.monotonic() < deadline:
            try:
                frame = json.loads(canvas.recv(timeout=max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            if frame["workspace_id"] == ws and frame["event"] == "WORKSPACE_ONLINE":
                break
        assert frame["event"] == "WORKSPACE_ONLINE" and frame["workspace_id"] == ws, (
            gateway.process.tail(60)
        )
        assert frame["payload"]["status"] == "online"
        assert set(frame) >= {"event", "workspace_id", "timestamp", "payload", "position"}
    with connect(f"{ws_url}?since={frame['position']}", open_timeout=10) as resumed:
        remove_now(ws)
        later = json.loads(resumed.recv(timeout=20))
        while later["workspace_id"] != ws:
            later = json.loads(resumed.recv(timeout=20))
        assert later["event"] == "WORKSPACE_REMOVED"
        assert later["payload"]["status"] == "removed"
