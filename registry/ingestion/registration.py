"""Registration (CONTRACT §4.1) and agent card updates (§4.3)."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from sqlalchemy import Row, text

from registry import metrics
from registry.config import get_settings
from registry.ingestion.payloads import RegisterPayload, UpdateCardPayload
from registry.ingestion.tokens import (
    UNAUTHORIZED_ERROR,
    Delivery,
    Message,
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
    saas_mode,
    system_resolver,
)
from registry.jsontext import dumps
from registry.liveness.keys import cache_urls, set_liveness
from registry.outcomes import ConcurrentRegistration, Rejected, Unauthorized
from registry.statuses import POLL_RUNTIMES, EventType, Status
from registry.uow import UnitOfWork, record_event_on_commit

# The provisioner writes the container's loopback URL (`http://127.0.0.1:<port>` or
# `http://localhost:<port>`); agents report an address the platform could not reach
# from inside its network, so the provisioner's one wins — except on port 8000, the
# agent's own in-container port, which only a misconfigured provisioner ever wrote
# (CONTRACT §12). The URL guard refuses agent-sent loopback addresses (§6), so a kept
# 127.0.0.1 URL is always one the provisioner wrote.
PROVISIONER_URL_PREFIXES = ("http://127.0.0.1:", "http://localhost:")
AGENT_PORT = 8000

# Registrations leave these statuses alone (CONTRACT §12): an operator paused the
# workspace, or the hibernation sweep is stopping or has stopped it.
NOT_WOKEN = frozenset({Status.PAUSED, Status.HIBERNATING, Status.HIBERNATED})

_COLUMNS = "id, name, status, runtime, delivery_mode, url"
_LOCK_ROW = text(f"SELECT {_COLUMNS} FROM workspaces WHERE id = :id FOR UPDATE")
# The same read without the lock: what the checks that may wait on DNS need.
_READ_ROW = text(f"SELECT {_COLUMNS} FROM workspaces WHERE id = :id")
# A registration refused after its token was accepted (CONTRACT §12).
_STAMP_FAILURE = text(
    "UPDATE workspaces SET last_register_failure_at = now() WHERE id = :id AND status <> 'removed'"
)
_UUID_SHAPED = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

NO_TOKENS = TokenState(has_live=False, matched_id=None, issued_by_this_message=False)

_dns_pool: tuple[int, ThreadPoolExecutor] | None = None
DNS_THREADS = 8


def _dns_executor() -> ThreadPoolExecutor:
    # One pool per process: a forked pool process must not inherit the parent's threads.
    global _dns_pool  # noqa: PLW0603 - a per-process cache
    if _dns_pool is None or _dns_pool[0] != os.getpid():
        _dns_pool = (os.getpid(), ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="dns"))
    return _dns_pool[1]


def bounded_resolver(resolver: Resolver | None, timeout: float) -> Resolver:
    """`resolver` (default: the system's) giving up after `timeout` seconds.

    getaddrinfo has no timeout of its own and a hostile name server can stall it for
    as long as it likes; the lookup runs on a small thread pool and a late answer is
    a `TimeoutError` (an OSError: the URL guard refuses the name as unresolvable).
    """
    lookup = resolver or system_resolver

    def resolve(host: str) -> list[str]:
        future = _dns_executor().submit(lookup, host)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    return resolve


def resolve_delivery_mode(requested: str, stored: str | None, runtime: str | None) -> str:
    """CONTRACT §4.1 step 2, first match wins (external, kimi and kimi-cli runtimes default
    to poll: they run where the platform cannot dial them)."""
    if requested:
        return requested
    if stored:
        return stored
    if runtime in POLL_RUNTIMES:
        return "poll"  # laptops have no public HTTPS; push would fail the URL check anyway
    return "push"


def check_dialable_url(url: str, resolver: Resolver | None, *, field: str = "url") -> None:
    """The URL guard (CONTRACT §6) with a bounded DNS lookup; Rejected names the rule."""
    settings = get_settings()
    try:
        check_agent_url(
            url,
            saas=saas_mode(settings.deploy_mode, settings.org_id),
            resolver=bounded_resolver(resolver, settings.dns_timeout_seconds),
        )
    except UnsafeURL as exc:  # its message names the field ("url: ...") and the range
        message = str(exc)
        if field != "url":
            message = field + message.removeprefix("url")
        raise Rejected(message) from None


def agent_url_for(payload: RegisterPayload, mode: str, resolver: Resolver | None) -> str:
    """The URL a registration stores (CONTRACT §4.1 step 3, §6, §12), checked; "" for none.

    Every URL stored from an agent passes the URL guard, in poll mode too: a poll-mode
    URL is never dialled by the registry, but other services show, link and may dial
    it, and the provisioner-URL rule must only ever see URLs the provisioner wrote. In
    push mode an empty `url` falls back to the card's `url`.
    """
    url, field = payload.url, "url"
    if not url and mode == "push":
        fallback = card_url(payload.agent_card)
        if fallback:
            url, field = fallback.strip(), "agent_card.url"
    if mode == "push" and not url:
        raise Rejected("url is required for push-mode workspaces")
    if url:
        check_dialable_url(url, resolver, field=field)
    return url


def keeps_provisioner_url(stored: str | None) -> bool:
    """Whether a re-registration keeps the stored URL (CONTRACT §12): a provisioner's
    loopback URL with an explicit port other than 8000."""
    if not stored or not stored.startswith(PROVISIONER_URL_PREFIXES):
        return False
    parts = urlsplit(stored)
    try:
        port = parts.port
    except ValueError:  # a port out of range or not a number: not a usable URL
        return False
    # The host must really be the loopback one the prefix names: never userinfo
    # (`http://127.0.0.1:x@169.254.169.254:80/`) dressed up as it.
    loopback = "@" not in parts.netloc and parts.hostname in ("127.0.0.1", "localhost")
    return loopback and port is not None and port != AGENT_PORT


def completed_card(card: dict[str, Any], row_name: str) -> dict[str, Any]:
    """The card as stored (CONTRACT §12): an empty or UUID-shaped `name` is the
    workspace's name (canvases show it), an empty `description` the name."""
    completed = dict(card)
    name = completed.get("name")
    if name is None or (isinstance(name, str) and _blank_or_uuid(name)):
        completed["name"] = name = row_name
    description = completed.get("description")
    if description is None or (isinstance(description, str) and not description.strip()):
        completed["description"] = name if isinstance(name, str) else row_name
    return completed


def _blank_or_uuid(text_value: str) -> bool:
    stripped = text_value.strip()
    return not stripped or _UUID_SHAPED.match(stripped) is not None


def authorize(state: TokenState, presented: str | None, *, allow_redelivery: bool) -> None:
    """The hijack guard, raising Unauthorized."""
    if allow_redelivery and presented is None and state.issued_by_this_message:
        return  # this same message issued the workspace's token before it died
    if not is_authorized(state.has_live, state.matched_id):
        raise Unauthorized(UNAUTHORIZED_ERROR)


def _admit(
    uow: UnitOfWork,
    payload: RegisterPayload,
    row: Row[Any] | None,
    message: Message | None,
    state: TokenState | None = None,
) -> str:
    """The hijack guard and the removed-row rule; the delivery mode to apply."""
    if state is None:
        state = token_state(uow.conn, payload.id, payload.auth_token, message)
    authorize(state, payload.auth_token, allow_redelivery=True)
    if row is not None and row.status == Status.REMOVED:
        raise Rejected("id: workspace was removed")
    return resolve_delivery_mode(
        payload.delivery_mode,
        row.delivery_mode if row else None,
        row.runtime if row else None,
    )


def register(
    uow: UnitOfWork,
    payload: RegisterPayload,
    *,
    task_id: str | None = None,
    delivery: Delivery | None = None,
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    ws = payload.id
    message = Message.of(task_id, payload, delivery)
    if _needs_no_lookup(payload):
        # Poll mode asked for and no URL anywhere: nothing to resolve and nothing to
        # refuse before the lock, so the unlocked pass (two round trips) is skipped.
        mode, agent_url = str(payload.delivery_mode), None
    else:
        mode, agent_url = _checked_before_lock(uow, payload, message, resolver)

    # Under the lock, the authoritative checks again (a token may have been issued, or
    # the row created or removed, meanwhile). Only a changed delivery mode would need
    # another lookup: retried rather than resolved under the lock.
    row: Row[Any] | None = uow.conn.execute(_LOCK_ROW, {"id": ws}).first()
    # Token rows reference their workspace's row (a foreign key; rows are never
    # deleted), so a workspace without a row has none: one round trip saved for
    # every new workspace.
    state = NO_TOKENS if row is None else token_state(uow.conn, ws, payload.auth_token, message)
    if _admit(uow, payload, row, message, state) != mode:
        raise ConcurrentRegistration(f"{ws}: delivery mode changed during the URL check")

    if row is not None and row.status in NOT_WOKEN:
        # CONTRACT §12: nothing in the row changes and no status event is recorded;
        # the agent learns the status it is in (and its token, if it has none).
        status = str(row.status)
    elif row is not None and message is not None and state.issued_by_this_message:
        # A redelivery of a registration that committed (its token row was written in
        # the same transaction): applied already, so it only answers again. Applying
        # it twice would put back its card and URL over a newer card update.
        status = str(row.status)
    else:
        _upsert(uow, payload, row, mode, agent_url)
        status = str(Status.ONLINE)
    result: dict[str, Any] = {
        "status": "registered",
        "workspace_id": str(ws),
        "delivery_mode": mode,
        "workspace_status": status,
    }
    if state.matched_id is not None:
        touch_tokens(uow.conn, [state.matched_id])
    elif message is not None and state.issued_by_this_message:
        result["auth_token"] = derive_token(ws, message)
    elif not state.has_live:
        result["auth_token"] = issue_token(uow.conn, ws, message)
    return result


def _needs_no_lookup(payload: RegisterPayload) -> bool:
    """Whether the URL rules have nothing to check: poll mode requested (so the stored
    mode is not read) and neither `url` nor the card's `url` given."""
    card = payload.agent_card.get("url")
    return payload.delivery_mode == "poll" and not payload.url and card is None


def _checked_before_lock(
    uow: UnitOfWork, payload: RegisterPayload, message: Message | None, resolver: Resolver | None
) -> tuple[str, str | None]:
    """The delivery mode and checked URL, from an unlocked read of the row.

    Every check that may wait on DNS runs before the row lock (CONTRACT §4.1 step 3 is
    a network call): a slow or hostile name server must not stall this workspace's
    heartbeats. Auth first, so no lookup is made for an unauthenticated message.
    """
    ws = payload.id
    unlocked = uow.conn.execute(_READ_ROW, {"id": ws}).first()
    mode = _admit(uow, payload, unlocked, message)
    try:
        return mode, agent_url_for(payload, mode, resolver) or None
    except Rejected:
        if unlocked is not None:
            record_register_failure(uow, ws)
        raise


def record_register_failure(uow: UnitOfWork, ws: UUID) -> None:
    """Stamp `last_register_failure_at` (CONTRACT §12) in a transaction of its own.

    The refusal rolls the message's transaction back (a refusal changes nothing it
    was asked to change), but this record of the refusal must outlive it: it is
    what degrades the workspace on its next heartbeats. No row lock is held here
    (the URL checks run before the lock), so this never waits on its own message.
    """
    with uow.conn.engine.begin() as conn:
        conn.execute(_STAMP_FAILURE, {"id": ws})


def _upsert(
    uow: UnitOfWork,
    payload: RegisterPayload,
    row: Row[Any] | None,
    mode: str,
    agent_url: str | None,
) -> None:
    """Insert or update the row as online (CONTRACT §4.1 steps 4-6)."""
    ws = payload.id
    card = completed_card(payload.agent_card, row.name if row is not None else str(ws))
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
            {"id": ws, "name": str(ws), "url": agent_url, "card": dumps(card), "mode": mode},
        ).first()
        if inserted is None:
            # Another registration of the same new id committed first; retrying sees it.
            raise ConcurrentRegistration(str(ws))
        effective_url = inserted.url
    else:
        # A successful registration clears a register failure (CONTRACT §12).
        effective_url = uow.conn.execute(
            text(
                """
                UPDATE workspaces SET
                    agent_card = CAST(:card AS jsonb),
                    status = 'online',
                    last_heartbeat_at = now(),
                    updated_at = now(),
                    registered_at = COALESCE(registered_at, now()),
                    last_register_failure_at = NULL,
                    delivery_mode = :mode,
                    url = CASE WHEN :keep THEN url ELSE :url END
                WHERE id = :id AND status <> 'removed'
                RETURNING url
                """
            ),
            {
                "id": ws,
                "card": dumps(card),
                "mode": mode,
                "url": agent_url,
                "keep": keeps_provisioner_url(row.url),
            },
        ).scalar_one()
        if row.status != Status.ONLINE:
            previous = str(row.status)
            # Counted once committed: a rolled-back registration changed nothing.
            uow.after_commit(lambda: metrics.record_transition(previous, Status.ONLINE))

    ttl = get_settings().liveness_ttl_seconds
    uow.on_commit(lambda pipe: set_liveness(pipe, ws, ttl))
    uow.on_commit(lambda pipe: cache_urls(pipe, ws, effective_url, agent_url))
    record_event_on_commit(
        uow,
        EventType.WORKSPACE_ONLINE,
        ws,
        {"url": effective_url or "", "agent_card": card, "delivery_mode": mode},
    )


def card_url(card: dict[str, Any]) -> str | None:
    """The URL a card advertises (others dial it), or None when it has none."""
    url = card.get("url")
    if url is None:
        return None
    if not isinstance(url, str):
        raise Rejected("agent_card.url: must be a string")
    return url


def update_card(
    uow: UnitOfWork, payload: UpdateCardPayload, *, resolver: Resolver | None = None
) -> dict[str, Any]:
    ws = payload.workspace_id
    url = card_url(payload.agent_card)
    if url is not None:
        # CONTRACT §4.3: the platform and other agents dial what a card advertises, so
        # its url meets the push-URL guard. Authorised first (no lookup for strangers),
        # and checked before the row lock, like a registration's URL.
        _card_admit(uow, payload, uow.conn.execute(_READ_ROW, {"id": ws}).first())
        check_dialable_url(url, resolver, field="agent_card.url")
    row = uow.conn.execute(_LOCK_ROW, {"id": ws}).first()
    state = _card_admit(uow, payload, row)
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


def _card_admit(uow: UnitOfWork, payload: UpdateCardPayload, row: Row[Any] | None) -> TokenState:
    ws = payload.workspace_id
    if row is None:
        raise Rejected("workspace_id: unknown workspace")
    state = token_state(uow.conn, ws, payload.auth_token, None)
    authorize(state, payload.auth_token, allow_redelivery=False)
    if row.status == Status.REMOVED:
        raise Rejected("workspace_id: workspace was removed")
    return state
