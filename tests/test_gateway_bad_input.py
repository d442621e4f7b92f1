"""Bad input at the gateway: the status code, the error text, and that nothing of it
reached the queue or the database (CONTRACT §11).

The gateways here publish to a RabbitMQ vhost no worker consumes, so whatever they
published would still be in its queues: "nothing reached the queue" is an empty
broker. One gateway runs with the defaults; a strict one with `MOLECULE_ORG_ID` set
and a small `RATE_LIMIT`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_helpers import RunningGateway, bearer, running_gateway
from ingest_helpers import db_snapshot, register_now
from kombu import Connection
from liveness_helpers import private_rabbitmq_vhost
from sqlalchemy import Engine

from molecule_registry_client.names import QUEUE_NAMES

pytestmark = pytest.mark.integration

ORG = "org-acme"
RATE = 5


@pytest.fixture(scope="module")
def idle_broker() -> Iterator[str]:
    """A broker of their own (a RabbitMQ vhost), consumed by nobody."""
    with private_rabbitmq_vhost() as url:
        yield url


@pytest.fixture(scope="module")
def gateway(
    idle_broker: str, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with running_gateway(
        test_env,
        tmp_path_factory.mktemp("gateway"),
        CELERY_BROKER_URL=idle_broker,
        GATEWAY_REGISTER_TIMEOUT_SECONDS="1",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def strict_gateway(
    idle_broker: str, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with running_gateway(
        test_env,
        tmp_path_factory.mktemp("strict"),
        CELERY_BROKER_URL=idle_broker,
        MOLECULE_ORG_ID=ORG,
        # The org id alone would switch the URL guard to SaaS mode; not what is tested.
        MOLECULE_DEPLOY_MODE="self-hosted",
        RATE_LIMIT=str(RATE),
    ) as running:
        yield running


def queued(broker: str) -> list[tuple[dict[str, Any], Any]]:
    """Every message waiting in the broker's registry queues, as (headers, decoded body);
    taken off the queues as they are read."""
    messages = []
    with Connection(broker) as conn:
        for name in QUEUE_NAMES:
            channel = conn.channel()
            try:
                channel.queue_declare(name, passive=True)
            except conn.channel_errors:
                continue  # never declared: nothing was ever sent there
            while (message := channel.basic_get(name, no_ack=True)) is not None:
                messages.append((dict(message.headers), json.loads(message.body)))
            channel.close()
    return messages


@pytest.fixture
def untouched(db: Engine, idle_broker: str) -> Iterator[None]:
    """The test's calls leave the database and the broker exactly as they were."""
    queued(idle_broker)
    before = db_snapshot(db)
    yield
    assert queued(idle_broker) == []
    assert db_snapshot(db) == before


def refused(answer: httpx.Response, status: int, error: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": error}
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert header in answer.headers


@pytest.fixture
def member(db: Engine) -> tuple[str, str]:
    """A registered workspace and its token (registered directly, not through a queue)."""
    ws = str(uuid.uuid4())
    return ws, register_now(ws, card={"name": "member"})["auth_token"]


def test_malformed_json(gateway: RunningGateway, member: tuple[str, str], untouched: None):
    ws, token = member
    with gateway.client() as http:
        for path in ("/registry/register", "/registry/heartbeat", "/registry/update-card"):
            answer = http.post(
                path,
                content=b'{"workspace_id": "' + ws.encode() + b'",',
                headers={"Content-Type": "application/json", **bearer(token)},
            )
            refused(answer, 400, "body: not valid JSON")


def test_non_object_body(gateway: RunningGateway, member: tuple[str, str], untouched: None):
    _ws, token = member
    with gateway.client() as http:
        for body, kind in (
            (b"[1, 2]", "an array"),
            (b'"text"', "a string"),
            (b"null", "null"),
            (b"3", "a number"),
            (b"true", "a boolean"),
        ):
            answer = http.post("/registry/heartbeat", content=body, headers=bearer(token))
            refused(answer, 400, f"body: must be a JSON object, not {kind}")


def test_wrong_types(gateway: RunningGateway, member: tuple[str, str], untouched: None):
    ws, token = member
    with gateway.client() as http:
        answer = http.post(
            "/registry/heartbeat",
            json={"workspace_id": ws, "active_tasks": "3", "error_rate": 2},
            headers=bearer(token),
        )
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert "active_tasks: Input should be a valid integer" in error
        assert "error_rate: Input should be less than or equal to 1" in error

        no_id = http.post("/registry/heartbeat", json={"active_tasks": 1})
        refused(no_id, 400, "workspace_id: is required")

        bad_id = http.post("/registry/register", json={"id": "ws-1", "agent_card": {}})
        refused(bad_id, 400, "id: must be a UUID")

        card = http.post(
            "/registry/register",
            json={"id": ws, "agent_card": "planner"},
            headers=bearer(token),
        )
        refused(card, 400, "agent_card: must be a JSON object")

        mode = http.post(
            "/registry/register",
            json={"id": ws, "agent_card": {}, "delivery_mode": "carrier-pigeon"},
            headers=bearer(token),
        )
        assert mode.status_code == 400
        assert mode.json()["error"].startswith("delivery_mode:")

        path = http.get("/workspaces/not-a-uuid/state")
        refused(path, 400, "id: must be a UUID")


def test_body_over_64_kib(gateway: RunningGateway, member: tuple[str, str], untouched: None):
    ws, token = member
    big = {"workspace_id": ws, "sample_error": "x" * (64 * 1024)}
    with gateway.client() as http:
        answer = http.post("/registry/heartbeat", json=big, headers=bearer(token))
        refused(answer, 413, "body: larger than 65536 bytes")

        # Sent in chunks, without a Content-Length: counted as it arrives.
        def chunks() -> Iterator[bytes]:
            data = json.dumps(big).encode()
            for start in range(0, len(data), 8192):
                yield data[start : start + 8192]

        streamed = http.post("/registry/heartbeat", content=chunks(), headers=bearer(token))
        refused(streamed, 413, "body: larger than 65536 bytes")


def test_unknown_route_and_wrong_method(gateway: RunningGateway, untouched: None):
    with gateway.client() as http:
        refused(http.get("/registry/nothing-here/at/all"), 404, "not found")
        refused(http.post("/registry/heartbeats", json={}), 404, "not found")
        refused(http.get("/registry/heartbeat"), 405, "method not allowed")
        refused(http.put("/registry/register", json={}), 405, "method not allowed")
        refused(http.post(f"/workspaces/{uuid.uuid4()}/state", json={}), 405, "method not allowed")


def test_missing_or_wrong_token(gateway: RunningGateway, member: tuple[str, str], untouched: None):
    ws, token = member
    beat = {"workspace_id": ws, "active_tasks": 1}
    error = "missing or invalid workspace auth token"
    with gateway.client() as http:
        refused(http.post("/registry/heartbeat", json=beat), 401, error)
        refused(http.post("/registry/heartbeat", json=beat, headers=bearer("x" * 43)), 401, error)
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        refused(http.post("/registry/heartbeat", json=beat, headers=basic), 401, error)
        # A token in the body is not a bearer: ignored, so the call has no token.
        in_body = {**beat, "auth_token": token}
        refused(http.post("/registry/heartbeat", json=in_body), 401, error)
        card = {"workspace_id": ws, "agent_card": {"name": "evil"}}
        refused(http.post("/registry/update-card", json=card), 401, error)
        register = {"id": ws, "agent_card": {"name": "evil"}, "delivery_mode": "poll"}
        refused(http.post("/registry/register", json=register), 401, error)
        refused(http.get(f"/registry/{ws}/peers"), 401, error)


@pytest.fixture
def stranger(db: Engine) -> tuple[str, str]:
    ws = str(uuid.uuid4())
    return ws, register_now(ws, card={"name": "stranger"})["auth_token"]


def test_token_of_another_workspace(
    gateway: RunningGateway, member: tuple[str, str], stranger: tuple[str, str], untouched: None
):
    ws, _token = member
    _other, other_token = stranger
    error = "missing or invalid workspace auth token"
    with gateway.client() as http:
        for path, body in (
            ("/registry/heartbeat", {"workspace_id": ws}),
            ("/registry/update-card", {"workspace_id": ws, "agent_card": {"name": "x"}}),
            ("/registry/register", {"id": ws, "agent_card": {"name": "x"}}),
        ):
            refused(http.post(path, json=body, headers=bearer(other_token)), 401, error)
        refused(http.get(f"/registry/{ws}/peers", headers=bearer(other_token)), 401, error)
        # A workspace that has no token yet (bootstrap) still refuses someone else's.
        fresh = {"workspace_id": str(uuid.uuid4())}
        refused(
            http.post("/registry/heartbeat", json=fresh, headers=bearer(other_token)), 401, error
        )


def test_wrong_org_header(strict_gateway: RunningGateway, untouched: None):
    error = "X-Molecule-Org-Id: wrong organization"
    ws = str(uuid.uuid4())
    with strict_gateway.client() as http:
        for headers in ({}, {"X-Molecule-Org-Id": "org-other"}):
            beat = http.post("/registry/heartbeat", json={"workspace_id": ws}, headers=headers)
            refused(beat, 403, error)
        right = http.get(f"/workspaces/{ws}/state", headers={"X-Molecule-Org-Id": ORG})
        assert right.status_code == 404  # past the org check: an unknown workspace


def test_flood_over_the_rate_limit(strict_gateway: RunningGateway, idle_broker: str, db: Engine):
    """RATE heartbeats pass; the rest are 429 with Retry-After, and never queued."""
    queued(idle_broker)
    ws = str(uuid.uuid4())
    token = register_now(ws, card={"name": "flood"})["auth_token"]
    headers = {"X-Molecule-Org-Id": ORG, **bearer(token)}
    answers = []
    with strict_gateway.client() as http:
        for _ in range(RATE + 10):
            answers.append(
                http.post("/registry/heartbeat", json={"workspace_id": ws}, headers=headers)
            )
        # Another caller (another token) has a budget of its own.
        other = str(uuid.uuid4())
        other_token = register_now(other, card={"name": "calm"})["auth_token"]
        calm = http.post(
            "/registry/heartbeat",
            json={"workspace_id": other},
            headers={"X-Molecule-Org-Id": ORG, **bearer(other_token)},
        )
    assert [a.status_code for a in answers] == [200] * RATE + [429] * 10
    assert [int(a.headers["x-ratelimit-remaining"]) for a in answers[:RATE]] == list(
        range(RATE - 1, -1, -1)
    )
    for answer in answers:
        assert answer.headers["x-ratelimit-limit"] == str(RATE)
        assert int(answer.headers["x-ratelimit-reset"]) > 0
    flooded = answers[-1]
    retry = int(flooded.headers["retry-after"])
    assert 1 <= retry <= 60
    assert flooded.json() == {"error": "rate limit exceeded", "retry_after": retry}
    assert calm.status_code == 200

    # Exactly the admitted heartbeats are in the broker (in batch messages), no more.
    items = heartbeats_in(idle_broker)
    assert sorted(items) == sorted([ws] * RATE + [other])


def heartbeats_in(broker: str) -> list[str]:
    """The workspace ids of every heartbeat waiting in the broker's batch messages."""
    ids = []
    for headers, (args, _kwargs, _embed) in queued(broker):
        assert headers["task"] == "registry.heartbeat_batch"
        ids.extend(item["workspace_id"] for item in args[0]["heartbeats"])
    return ids


def test_register_with_no_worker_answers_503(gateway: RunningGateway, idle_broker: str, db: Engine):
    """No worker answers in time: 503 with Retry-After, and the message expires, so a
    worker that comes later never issues a token nobody receives."""
    queued(idle_broker)
    ws = str(uuid.uuid4())
    with gateway.client() as http:
        answer = http.post(
            "/registry/register",
            json={"id": ws, "agent_card": {"name": "late"}, "delivery_mode": "poll"},
        )
    refused_text = "no answer from the registry within 1 s"
    assert answer.status_code == 503
    assert answer.json() == {"error": refused_text}
    assert int(answer.headers["retry-after"]) > 0
    ((headers, _body),) = queued(idle_broker)
    assert headers["task"] == "registry.register"
    assert headers["expires"]
