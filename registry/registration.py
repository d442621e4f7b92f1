"""Registration (SPEC §4.1) and agent card updates (§4.3)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from sqlalchemy import Row, text

from registry.config import get_settings
from registry.events import record_event_on_commit
from registry.jsontext import dumps
from registry.keys import cache_urls, internal_url_key, set_liveness, url_key
from registry.outcomes import Rejected, Unauthorized
from registry.payloads import RegisterPayload, UpdateCardPayload
from registry.statuses import EXTERNAL_RUNTIME, EventType, Status
from registry.tokens import (
    TokenState,
    derive_token,
    is_authorized,
    issue_token,
    token_state,
    touch_tokens,
)
from registry.uow import UnitOfWork
from registry.urlguard import ALLOWED_SCHEMES, Resolver, UnsafeURL, check_agent_url, saas_mode

# The provisioner writes the container's loopback URL; agents report an address the
# platform could not reach from inside its network, so the provisioner's one wins.
PROVISIONER_URL_PREFIX = "http://127.0.0.1"

_LOCK_ROW = text(
    "SELECT id, status, runtime, delivery_mode, url FROM workspaces WHERE id = :id FOR UPDATE"
)


def resolve_delivery_mode(requested: str, stored: str | None, runtime: str | None) -> str:
    """SPEC §4.1 step 2, first match wins (the seed added the external → poll default)."""
    if requested:
        return requested
    if stored:
        return stored
    if runtime == EXTERNAL_RUNTIME:
        return "poll"  # laptops have no public HTTPS; push would fail the URL check anyway
    return "push"


def check_url_for_mode(url: str, mode: str, resolver: Resolver | None) -> None:
    """In push mode the platform dials the agent, so the URL must be safe to dial."""
    if mode != "push":
        # Never dialled, so never resolved; but other services show and link the
        # stored URL, so a non-empty one must still be http(s).
        if url and _scheme(url) not in ALLOWED_SCHEMES:
            raise Rejected(f"url: scheme {_scheme(url)!r} is not allowed (http, https only)")
        return
    if not url:
        raise Rejected("url: is required in push delivery mode")
    settings = get_settings()
    try:
        check_agent_url(
            url, saas=saas_mode(settings.deploy_mode, settings.org_id), resolver=resolver
        )
    except UnsafeURL as exc:
        raise Rejected(str(exc) if str(exc).startswith("url") else f"url: {exc}") from None


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:  # e.g. an unclosed "[" IPv6 bracket
        return ""


def authorize(
    state: TokenState, workspace_id: UUID, presented: str | None, *, allow_redelivery: bool
) -> None:
    """The hijack guard, raising Unauthorized; records the token's use."""
    if allow_redelivery and presented is None and state.issued_by_this_message:
        return  # this same message issued the workspace's token before it died
    if not is_authorized(state.has_live, state.matched_id):
        raise Unauthorized("auth_token: missing or not valid for this workspace")


def register(
    uow: UnitOfWork,
    payload: RegisterPayload,
    *,
    task_id: str | None = None,
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    ws = payload.id
    row: Row[Any] | None = uow.conn.execute(_LOCK_ROW, {"id": ws}).first()
    state = token_state(uow.conn, ws, payload.auth_token, task_id)
    authorize(state, ws, payload.auth_token, allow_redelivery=True)
    if row is not None and row.status == Status.REMOVED:
        raise Rejected("id: workspace was removed")

    mode = resolve_delivery_mode(
        payload.delivery_mode,
        row.delivery_mode if row else None,
        row.runtime if row else None,
    )
    check_url_for_mode(payload.url, mode, resolver)
    agent_url = payload.url or None

    if row is None:
        inserted = uow.conn.execute(
            text(
                """
                INSERT INTO workspaces (id, name, status, url, agent_card, delivery_mode,
                                        last_heartbeat_at, registered_at)
                VALUES (:id, :name, 'online', :url, CAST(:card AS jsonb), :mode, now(), now())
                ON CONFLICT (id) DO NOTHING
                RETURNING url
                """
            ),
            {
                "id": ws,
                "name": str(ws),
                "url": agent_url,
                "card": dumps(payload.agent_card),
                "mode": mode,
            },
        ).first()
        if inserted is None:
            # Another registration of the same new id committed first; retrying sees it.
            raise ConcurrentRegistration(str(ws))
        effective_url = inserted.url
    else:
        effective_url = uow.conn.execute(
            text(
                """
                UPDATE workspaces SET
                    agent_card = CAST(:card AS jsonb),
                    status = 'online',
                    last_heartbeat_at = now(),
                    updated_at = now(),
                    registered_at = COALESCE(registered_at, now()),
                    delivery_mode = :mode,
                    url = CASE WHEN url LIKE :keep THEN url ELSE :url END
                WHERE id = :id AND status <> 'removed'
                RETURNING url
                """
            ),
            {
                "id": ws,
                "card": dumps(payload.agent_card),
                "mode": mode,
                "url": agent_url,
                "keep": PROVISIONER_URL_PREFIX + "%",
            },
        ).scalar_one()

    ttl = get_settings().liveness_ttl_seconds
    uow.on_commit(lambda pipe: set_liveness(pipe, ws, ttl))
    uow.on_commit(lambda pipe: cache_urls(pipe, ws, effective_url, agent_url))
    # A URL dropped by this registration (e.g. push -> poll) must not linger in the cache.
    cached = ((url_key(ws), effective_url), (internal_url_key(ws), agent_url))
    dropped = [key for key, url in cached if not url]
    if dropped:
        uow.on_commit(lambda pipe: pipe.delete(*dropped))
    record_event_on_commit(
        uow,
        EventType.WORKSPACE_ONLINE,
        ws,
        {"url": effective_url or "", "agent_card": payload.agent_card, "delivery_mode": mode},
    )

    result: dict[str, Any] = {
        "status": "registered",
        "workspace_id": str(ws),
        "delivery_mode": mode,
    }
    if state.matched_id is not None:
        touch_tokens(uow.conn, [state.matched_id])
    elif state.issued_by_this_message:
        result["auth_token"] = _reissue(ws, task_id)
    elif not state.has_live:
        result["auth_token"] = issue_token(uow.conn, ws, task_id)
    return result


def update_card(uow: UnitOfWork, payload: UpdateCardPayload) -> dict[str, Any]:
    ws = payload.workspace_id
    row = uow.conn.execute(_LOCK_ROW, {"id": ws}).first()
    if row is None:
        raise Rejected("workspace_id: unknown workspace")
    state = token_state(uow.conn, ws, payload.auth_token, None)
    authorize(state, ws, payload.auth_token, allow_redelivery=False)
    if row.status == Status.REMOVED:
        raise Rejected("workspace_id: workspace was removed")
    uow.conn.execute(
        text(
            "UPDATE workspaces SET agent_card = CAST(:card AS jsonb), updated_at = now() "
            "WHERE id = :id AND status <> 'removed'"
        ),
        {"id": ws, "card": dumps(payload.agent_card)},
    )
    if state.matched_id is not None:
        touch_tokens(uow.conn, [state.matched_id])
    record_event_on_commit(
        uow, EventType.AGENT_CARD_UPDATED, ws, {"agent_card": payload.agent_card}
    )
    return {"status": "updated", "workspace_id": str(ws)}


class ConcurrentRegistration(Exception):
    """Two first registrations of one id raced; the message is retried."""


def _reissue(workspace_id: UUID, task_id: str | None) -> str:
    assert task_id is not None  # issued_by_this_message implies a task id
    return derive_token(workspace_id, task_id)
