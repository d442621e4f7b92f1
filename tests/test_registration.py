"""registry.register and registry.update_card (CONTRACT §4.1, §4.3, §6, §10) on real services."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from ingest_helpers import (
    PUBLIC_IP,
    create_now,
    db_snapshot,
    heartbeat_now,
    insert_workspace,
    lock_waiters,
    new_id,
    outcome,
    recorded_events,
    redis_snapshot,
    register_now,
    remove_now,
    run_message,
    tokens_of,
    update_card_now,
    wait_until,
    workspace,
)
from sqlalchemy import Engine, text

from molecule_registry_client.names import REGISTER_TASK, UPDATE_CARD_TASK
from registry.config import get_settings, reload_settings
from registry.ingestion.payloads import RegisterPayload, parse_payload
from registry.ingestion.registration import ConcurrentRegistration, register
from registry.ingestion.tokens import hash_token
from registry.liveness.keys import URL_CACHE_TTL_SECONDS
from registry.uow import unit_of_work
from tasks.base import RegistryTask

pytestmark = pytest.mark.integration

AGENT_HOST = "agent.example.com"
AGENT_URL = f"http://{AGENT_HOST}:8000"


def resolves_to(*addresses: str) -> Callable[[str], list[str]]:
    def resolve(host: str) -> list[str]:
        assert host == AGENT_HOST
        return list(addresses)

    return resolve


def never_resolves(host: str) -> list[str]:
    raise OSError(f"{host}: Name or service not known")


def must_not_resolve(host: str) -> list[str]:
    raise AssertionError(f"{host} was resolved, but poll mode never dials the agent")


PUBLIC = resolves_to(PUBLIC_IP)


@pytest.fixture
def saas(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MOLECULE_DEPLOY_MODE", "saas")
    reload_settings()
    yield
    monkeypatch.undo()
    reload_settings()


def unchanged(engine: Engine, client: redis.Redis) -> Callable[[], None]:
    """Snapshot now; calling the result asserts nothing changed since."""
    before = (db_snapshot(engine), redis_snapshot(client))

    def check() -> None:
        assert (db_snapshot(engine), redis_snapshot(client)) == before

    return check


def unchanged_but_the_failure_stamp(engine: Engine, client: redis.Redis) -> Callable[[], None]:
    """`unchanged`, except that workspaces.last_register_failure_at may be set (§12):
    a registration refused after its token was accepted records that, and only that."""

    def snapshot() -> Any:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT (to_jsonb(w) - 'last_register_failure_at')::text "
                    "FROM workspaces w ORDER BY 1"
                )
            ).scalars()
            others = {k: v for k, v in db_snapshot(engine).items() if k != "workspaces"}
            return list(rows), others, redis_snapshot(client)

    before = snapshot()

    def check() -> None:
        assert snapshot() == before

    return check


# --- first registration, tokens and the hijack guard ------------------------


def test_first_registration_creates_the_row_and_returns_a_token_once(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    result = register_now(ws, card={"name": "a", "skills": ["x"]})

    assert result["status"] == "registered"
    assert (result["workspace_id"], result["delivery_mode"]) == (ws, "poll")
    token = result["auth_token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 bytes, URL-safe base64, no padding
    row = workspace(db, ws)
    assert (row.name, row.status, row.delivery_mode) == (ws, "online", "poll")
    # An empty description is filled from the name (CONTRACT §12).
    assert row.agent_card == {"name": "a", "skills": ["x"], "description": "a"}
    assert row.last_heartbeat_at is not None and row.registered_at is not None
    (stored,) = tokens_of(db, ws)
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert stored.prefix == token[:8]
    assert stored.revoked_at is None


def test_a_registered_workspace_needs_its_token(db: Engine, redis_client: redis.Redis) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]

    check = unchanged(db, redis_client)
    refused = outcome(lambda: register_now(ws, card={"name": "hijacker"}))
    assert refused["status"] == "unauthorized"
    assert refused["error"].startswith("auth_token:")
    wrong = outcome(lambda: register_now(ws, auth_token="not-the-token"))
    assert wrong["status"] == "unauthorized"
    check()

    again = register_now(ws, card={"name": "b"}, auth_token=token)
    assert again["status"] == "registered"
    assert "auth_token" not in again  # no new token
    assert len(tokens_of(db, ws)) == 1
    assert tokens_of(db, ws)[0].last_used_at is not None  # a successful check is recorded
    assert workspace(db, ws).agent_card == {"name": "b", "description": "b"}


def test_a_token_of_another_workspace_is_refused_everywhere(
    db: Engine, redis_client: redis.Redis
) -> None:
    mine, other = new_id(), new_id()
    register_now(mine)
    other_token = register_now(other)["auth_token"]

    check = unchanged(db, redis_client)
    assert outcome(lambda: register_now(mine, auth_token=other_token))["status"] == "unauthorized"
    assert heartbeat_now(mine, other_token, error_rate=0.9)["status"] == "unauthorized"
    card = outcome(lambda: update_card_now(mine, {"evil": True}, other_token))
    assert card["status"] == "unauthorized"
    check()


# --- removed workspaces --------------------------------------------------------


def test_a_removed_workspace_is_never_resurrected(db: Engine, redis_client: redis.Redis) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    remove_now(ws)

    check = unchanged(db, redis_client)
    for attempt in (lambda: register_now(ws), lambda: register_now(ws, auth_token=token)):
        refused = outcome(attempt)
        assert refused == {"status": "rejected", "error": "id: workspace was removed"}
    assert heartbeat_now(ws, token) == {"status": "ignored", "reason": "workspace was removed"}
    assert heartbeat_now(ws) == {"status": "ignored", "reason": "workspace was removed"}
    card = outcome(lambda: update_card_now(ws, {"x": 1}, None))
    assert card["status"] == "rejected" and "removed" in card["error"]
    check()
    assert workspace(db, ws).status == "removed"


# --- URL, delivery mode and the SSRF guard ---------------------------------


def test_a_provisioner_url_is_kept_on_reregistration(db: Engine, redis_client: redis.Redis) -> None:
    provisioned = "http://127.0.0.1:32801"
    ws = insert_workspace(db, status="provisioning", url=provisioned)

    result = register_now(ws, url=AGENT_URL, delivery_mode="push", resolver=PUBLIC)

    assert result["delivery_mode"] == "push"
    row = workspace(db, ws)
    assert (row.url, row.status) == (provisioned, "online")
    # The effective URL is the provisioner's; the agent-reported one is cached apart.
    assert redis_client.get(f"ws:{ws}:url") == provisioned
    assert redis_client.get(f"ws:{ws}:internal_url") == AGENT_URL
    (event,) = recorded_events(db, ws)
    assert event == (
        "WORKSPACE_ONLINE",
        {
            "url": provisioned,
            "agent_card": {"name": "agent", "description": "agent"},
            "delivery_mode": "push",
        },
    )


def test_an_agent_url_replaces_a_non_provisioner_url(db: Engine) -> None:
    ws = insert_workspace(db, url="http://old.example.com")
    register_now(ws, url=AGENT_URL, delivery_mode="push", resolver=PUBLIC)
    assert workspace(db, ws).url == AGENT_URL


# (case, stored delivery_mode, runtime, payload delivery_mode, url, expected mode or error)
MODES: list[tuple[str, str | None, str, str, str, str]] = [
    ("payload push beats stored poll", "poll", "langgraph", "push", AGENT_URL, "push"),
    ("payload poll beats stored push", "push", "langgraph", "poll", "", "poll"),
    ("payload push beats external default", None, "external", "push", AGENT_URL, "push"),
    ("stored poll when payload empty", "poll", "langgraph", "", "", "poll"),
    ("stored push when payload empty", "push", "external", "", AGENT_URL, "push"),
    ("stored push still needs a url", "push", "langgraph", "", "", "url is required"),
    ("external runtime defaults to poll", None, "external", "", "", "poll"),
    ("other runtimes default to push", None, "hermes", "", AGENT_URL, "push"),
    ("push default needs a url", None, "langgraph", "", "", "url is required"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stored", "runtime", "requested", "url", "expected"),
    [m[1:] for m in MODES],
    ids=[m[0] for m in MODES],
)
def test_delivery_mode_resolution(
    *, db: Engine, stored: str | None, runtime: str, requested: str, url: str, expected: str
) -> None:
    ws = insert_workspace(db, status="awaiting_agent", runtime=runtime, delivery_mode=stored)
    result = outcome(lambda: register_now(ws, url=url, delivery_mode=requested, resolver=PUBLIC))
    if expected in ("push", "poll"):
        assert result["delivery_mode"] == expected
        assert workspace(db, ws).delivery_mode == expected
    else:
        assert result["status"] == "rejected"
        assert result["error"].startswith(expected)
        assert workspace(db, ws).status == "awaiting_agent"


def test_an_unknown_workspace_registers_in_push_mode_by_default(db: Engine) -> None:
    ws = new_id()
    assert register_now(ws, url=AGENT_URL, delivery_mode="", resolver=PUBLIC)["delivery_mode"] == (
        "push"
    )
    missing = outcome(lambda: register_now(new_id(), delivery_mode=""))
    assert missing == {"status": "rejected", "error": "url is required for push-mode workspaces"}


# (case, url, resolver, error fragment or None when accepted)
URLS: list[tuple[str, str, Callable[[str], list[str]], str | None]] = [
    ("public name", AGENT_URL, PUBLIC, None),
    ("https", f"https://{AGENT_HOST}", PUBLIC, None),
    ("localhost without lookup", "http://localhost:8000", must_not_resolve, None),
    ("name resolving to a private address", AGENT_URL, resolves_to("10.0.0.7"), "private range"),
    ("one bad address among good ones", AGENT_URL, resolves_to(PUBLIC_IP, "169.254.169.254"), "169.254.0.0/16"),
    ("unresolvable name", AGENT_URL, never_resolves, "does not resolve"),
    ("loopback literal", "http://127.0.0.1:9000", must_not_resolve, "127.0.0.0/8"),
    ("metadata literal", "http://169.254.169.254/latest", must_not_resolve, "cloud metadata"),
    ("mapped IPv6 loopback", "http://[::ffff:127.0.0.1]/", must_not_resolve, "127.0.0.0/8"),
    ("ftp scheme", f"ftp://{AGENT_HOST}/", PUBLIC, "scheme 'ftp'"),
    ("no scheme", AGENT_HOST, PUBLIC, "scheme ''"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "resolver", "error"), [u[1:] for u in URLS], ids=[u[0] for u in URLS]
)
def test_push_mode_requires_a_safe_url(
    db: Engine, redis_client: redis.Redis, url: str, resolver: Any, error: str | None
) -> None:
    ws = new_id()
    check = unchanged(db, redis_client)
    result = outcome(lambda: register_now(ws, url=url, delivery_mode="push", resolver=resolver))
    if error is None:
        assert result["status"] == "registered", result
        return
    assert result["status"] == "rejected"
    assert result["error"].startswith("url:") and error in result["error"], result
    check()


def test_private_addresses_are_allowed_in_saas_mode(db: Engine, saas: None) -> None:
    assert get_settings().deploy_mode == "saas"
    private = register_now(
        new_id(), url=AGENT_URL, delivery_mode="push", resolver=resolves_to("10.0.0.7")
    )
    assert private["status"] == "registered"
    # The always-blocked ranges stay blocked.
    metadata = outcome(
        lambda: register_now(new_id(), url="http://169.254.169.254", delivery_mode="push")
    )
    assert metadata["status"] == "rejected"


def test_poll_mode_accepts_an_empty_url_and_never_resolves(db: Engine) -> None:
    ws = new_id()
    assert register_now(ws, url="", resolver=must_not_resolve)["delivery_mode"] == "poll"
    assert workspace(db, ws).url is None


def test_poll_mode_url_passes_the_url_check_too(db: Engine, redis_client: redis.Redis) -> None:
    # CONTRACT §6 (amended): every URL stored from an agent passes the check, poll too.
    ws = insert_workspace(db, status="online", runtime="external")
    check = unchanged_but_the_failure_stamp(db, redis_client)
    result = outcome(lambda: register_now(ws, url="http://10.1.2.3:8000"))
    assert result["status"] == "rejected"
    assert result["error"].startswith("url: 10.1.2.3 is in a private range")
    check()
    register_now(ws, url="http://8.8.8.8:8000", resolver=must_not_resolve)
    assert workspace(db, ws).url == "http://8.8.8.8:8000"


def test_poll_mode_still_refuses_a_non_http_url(db: Engine, redis_client: redis.Redis) -> None:
    check = unchanged(db, redis_client)
    result = outcome(lambda: register_now(new_id(), url="javascript:alert(1)"))
    assert result["status"] == "rejected"
    assert result["error"].startswith("url: scheme 'javascript'")
    check()


# --- Redis side effects --------------------------------------------------------


def test_registration_sets_the_liveness_key_and_url_caches(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    register_now(ws, url="http://localhost:8000", delivery_mode="push")
    ttl = get_settings().liveness_ttl_seconds
    assert redis_client.get(f"ws:{ws}") == "online"
    assert ttl - 5 <= redis_client.ttl(f"ws:{ws}") <= ttl
    for key in (f"ws:{ws}:url", f"ws:{ws}:internal_url"):
        assert redis_client.get(key) == "http://localhost:8000"
        assert 0 < redis_client.ttl(key) <= URL_CACHE_TTL_SECONDS


def test_a_url_dropped_by_reregistration_leaves_no_stale_cache(
    db: Engine, redis_client: redis.Redis
) -> None:
    ws = new_id()
    token = register_now(ws, url="http://localhost:8000", delivery_mode="push")["auth_token"]
    register_now(ws, url="", delivery_mode="poll", auth_token=token)
    assert workspace(db, ws).url is None
    assert redis_client.get(f"ws:{ws}:url") is None
    assert redis_client.get(f"ws:{ws}:internal_url") is None


# --- agent card updates ------------------------------------------------------


def test_update_card_records_the_new_card(db: Engine, redis_client: redis.Redis) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]

    check = unchanged(db, redis_client)
    assert outcome(lambda: update_card_now(ws, {"v": 2}, None))["status"] == "unauthorized"
    unknown = outcome(lambda: update_card_now(new_id(), {"v": 2}, token))
    assert unknown == {"status": "rejected", "error": "workspace_id: unknown workspace"}
    check()

    assert update_card_now(ws, {"v": 2}, token) == {"status": "updated", "workspace_id": ws}
    assert workspace(db, ws).agent_card == {"v": 2}
    assert recorded_events(db, ws)[-1] == ("AGENT_CARD_UPDATED", {"agent_card": {"v": 2}})


def test_a_provisioned_workspace_needs_the_token_it_was_created_with(db: Engine) -> None:
    created = create_now("box")
    ws = created["workspace_id"]
    assert outcome(lambda: update_card_now(ws, {"v": 1}, None))["status"] == "unauthorized"
    assert update_card_now(ws, {"v": 1}, created["auth_token"])["status"] == "updated"


def test_a_workspace_without_a_live_token_can_update_its_card(db: Engine) -> None:
    ws = insert_workspace(db, status="provisioning")  # written by another service, no token
    assert update_card_now(ws, {"v": 1}, None)["status"] == "updated"


# --- through a real worker -----------------------------------------------------


def test_register_and_update_card_messages(db: Engine, worker: Any, celery_app: Celery) -> None:
    ws = new_id()
    first = run_message(
        celery_app, REGISTER_TASK, {"id": ws, "agent_card": {"n": 1}, "url": "http://localhost:9"}
    )
    assert first["status"] == "registered" and first["delivery_mode"] == "push"
    token = first["auth_token"]

    again = run_message(celery_app, REGISTER_TASK, {"id": ws, "agent_card": {"n": 2}})
    assert again["status"] == "unauthorized"
    with_token = {"id": ws, "agent_card": {"n": 2}, "auth_token": token}
    again = run_message(celery_app, REGISTER_TASK, {**with_token, "url": "http://localhost:9"})
    assert again == {
        "status": "registered",
        "workspace_id": ws,
        "delivery_mode": "push",
        "workspace_status": "online",
    }

    card = {"workspace_id": ws, "agent_card": {"n": 3}, "auth_token": token}
    assert run_message(celery_app, UPDATE_CARD_TASK, card)["status"] == "updated"
    assert workspace(db, ws).agent_card == {"n": 3}
    assert [kind for kind, _ in recorded_events(db, ws)] == [
        "WORKSPACE_ONLINE",
        "WORKSPACE_ONLINE",
        "AGENT_CARD_UPDATED",
    ]


@pytest.mark.parametrize(
    ("url", "status"),
    [
        (f"http://{PUBLIC_IP}:8000", "registered"),
        ("http://localhost:8000", "registered"),
        ("http://169.254.169.254/", "rejected"),
        ("http://192.168.1.20:8000", "rejected"),
    ],
)
def test_push_url_check_through_a_worker(
    db: Engine, worker: Any, celery_app: Celery, url: str, status: str
) -> None:
    payload = {"id": new_id(), "agent_card": {}, "delivery_mode": "push", "url": url}
    result = run_message(celery_app, REGISTER_TASK, payload)
    assert result["status"] == status, result


def test_two_first_registrations_of_one_id_race_and_the_loser_retries(db: Engine) -> None:
    ws = new_id()
    raised: list[BaseException] = []

    def second() -> None:
        try:
            register_now(ws)
        except ConcurrentRegistration as exc:
            raised.append(exc)

    with unit_of_work() as uow:
        raw = {"id": ws, "agent_card": {}, "delivery_mode": "poll"}
        first = register(uow, parse_payload(RegisterPayload, raw))
        racer = threading.Thread(target=second)
        racer.start()
        wait_until(lambda: lock_waiters(db) == 1)  # its INSERT waits for ours
    racer.join(timeout=10)

    assert len(raised) == 1  # a transient error: the task retries it with backoff
    assert ConcurrentRegistration in RegistryTask.autoretry_for
    # The retry sees the committed winner: without its token the loser is refused.
    assert outcome(lambda: register_now(ws))["status"] == "unauthorized"
    (token_row,) = tokens_of(db, ws)
    assert token_row.token_hash == hash_token(first["auth_token"])
