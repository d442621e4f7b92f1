"""Registration (CONTRACT §4.1) and agent card updates (§4.3)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, text

from registry.config import get_settings
from registry.ingestion.payloads import RegisterPayload, UpdateCardPayload
from registry.ingestion.tokens import (
    UNAUTHORIZED_ERROR,
    TokenState,
    derive_token,
    is_authorized,
    issue_token,
    token_state,
    touch_tokens,
)
from registry.ingestion.urlguard import (
    Resolver,
    UnsafeURL,
    check_agent_url,
    check_scheme,
    saas_mode,
)
from registry.jsontext import dumps
from registry.liveness.keys import cache_urls, set_liveness
from registry.outcomes import Rejected, Unauthorized
from registry.statuses import EXTERNAL_RUNTIME, EventType, Status
from registry.uow import UnitOfWork, record_event_on_commit

# The provisioner writes the container's loopback URL; agents report an address the
# platform could not reach from inside its network, so the provisioner's one wins.
PROVISIONER_URL_PREFIX = "http://127.0.0.1"

_LOCK_ROW = text(
    "SELECT id, status, runtime, delivery_mode FROM workspaces WHERE id = :id FOR UPDATE"
)


def resolve_delivery_mode(requested: str, stored: str | None, runtime: str | None) -> str:
    """CONTRACT §4.1 step 2, first match wins (external runtimes default to poll: they run on laptops without public HTTPS)."""
    if requested:
        return requested
    if stored:
        return stored
    if runtime == EXTERNAL_RUNTIME:
        return "poll"  # laptops have no public HTTPS; push would fail the URL check anyway
    return "push"


def check_url_for_mode(url: str, mode: str, resolver: Resolver | None) -> None:
    """In push mode the platform dials the agent, so the URL must be safe to dial."""
    if mode == "push" and not url:
        raise Rejected("url: is required in push delivery mode")
    try:
        if mode == "push":
            settings = get_settings()
            check_agent_url(
                url, saas=saas_mode(settings.deploy_mode, settings.org_id), resolver=resolver
            )
        elif url:
            # Never dialled, so never resolved; but other services show and link the
            # stored URL, so a non-empty one must still be http(s).
            check_scheme(url)
    except UnsafeURL as exc:  # its message names the field ("url: ...")
        raise Rejected(str(exc)) from None


def authorize(state: TokenState, presented: str | None, *, allow_redelivery: bool) -> None:
    """The hijack guard, raising Unauthorized."""
    if allow_redelivery and presented is None and state.issued_by_this_message:
        return  # this same message issued the workspace's token before it died
    if not is_authorized(state.has_live, state.matched_id):
        raise Unauthorized(UNAUTHORIZED_ERROR)


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
    authorize(state, payload.auth_token, allow_redelivery=True)
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
    elif task_id and state.issued_by_this_message:
        result["auth_token"] = derive_token(ws, task_id)
    elif not state.has_live:
        result["auth_token"] = issue_token(uow.conn, ws, task_id)
    return result


def update_card(uow: UnitOfWork, payload: UpdateCardPayload) -> dict[str, Any]:
    ws = payload.workspace_id
    row = uow.conn.execute(_LOCK_ROW, {"id": ws}).first()
    if row is None:
        raise Rejected("workspace_id: unknown workspace")
    state = token_state(uow.conn, ws, payload.auth_token, None)
    authorize(state, payload.auth_token, allow_redelivery=False)
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
