"""Workspace auth tokens (CONTRACT §10) and the re-registration hijack guard.

Plaintext tokens are 32 bytes, URL-safe base64 without padding; only their SHA-256
and an 8-character prefix are stored. A token issued while handling a message is
derived from that message (its task id and a digest of its payload) with a
per-installation secret (HMAC-SHA256), so a registration redelivered after its commit
can answer with the same token without the plaintext ever being stored (CONTRACT §4.1
step 7). Without a task id the token is plain random bytes.

Neither a task id (worker logs and monitoring tools show it) nor a payload (its URL,
card and mode are in the WORKSPACE_ONLINE event) is a secret, so "the same message"
must also prove it is the same delivery (CONTRACT §4.1 step 7): `Delivery` carries
what a replayer cannot have. With the Redis broker that is the message's delivery
tag, made by the first producer and kept by the broker when it restores an
unacknowledged message, and never shown by Celery; it is part of the token row's
`issue_key`, so a re-sent copy (a new tag) never matches. With RabbitMQ it is the
broker's own `redelivered` flag, which no producer can set. On any broker a producer
may put a `request_secret` of its own in the payload (the gateway does): it is part of
the payload digest, so only a sender holding it matches. Only a row issued within the
redelivery window (registry.limits) counts. Anything else under that task id is a
registration without a token like any other: unauthorized.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import Connection, text

from registry.config import get_settings
from registry.limits import redelivery_window_seconds

TOKEN_BYTES = 32
PREFIX_LENGTH = 8
# last_used_at is bookkeeping for operators; writing it on every heartbeat would
# double the heartbeat's writes, so it is refreshed at most once a minute.
LAST_USED_RESOLUTION_SECONDS = 60


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def payload_digest(payload: BaseModel | dict[str, Any]) -> str:
    """SHA-256 of the payload's canonical JSON (sorted keys, validated values)."""
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """What the broker says of one delivery that a replayed copy cannot imitate."""

    tag: str | None = None  # Redis: the envelope's delivery tag (kept across restores)
    redelivered: bool = False  # the broker's redelivered flag, when no producer can set it


@dataclass(frozen=True)
class Message:
    """What identifies one message for the redelivery answer (see module doc)."""

    task_id: str
    digest: str
    proof: str = ""  # the delivery tag, when the broker keeps one across redeliveries
    answerable: bool = False  # may a token it issued be handed out again?

    @classmethod
    def of(
        cls, task_id: str | None, payload: BaseModel, delivery: Delivery | None = None
    ) -> Message | None:
        if not task_id:
            return None
        delivery = delivery or Delivery()
        secret = bool(getattr(payload, "request_secret", None))
        return cls(
            task_id,
            payload_digest(payload),
            proof=delivery.tag or "",
            answerable=secret or bool(delivery.tag) or delivery.redelivered,
        )

    @property
    def issue_key(self) -> str:
        material = f"task:{self.task_id}:payload:{self.digest}:proof:{self.proof}"
        return hashlib.sha256(material.encode()).hexdigest()


# The installation's secret, read once per process and database: it never changes
# once the first migration made it, and reading it per registration cost a pooled
# connection and a round trip each time (a sixth of a registration in the worker).
_stored_secrets: dict[str, bytes] = {}


def _secret_for(database_url: str, configured: str) -> bytes:
    if configured:
        return configured.encode()
    cached = _stored_secrets.get(database_url)
    if cached is not None:
        return cached
    from registry.db import get_engine

    with get_engine(database_url).connect() as conn:
        value = conn.execute(
            text("SELECT value FROM registry_secrets WHERE name = 'token_secret'")
        ).scalar_one()
    _stored_secrets[database_url] = bytes(value)
    return bytes(value)


def token_secret() -> bytes:
    settings = get_settings()
    return _secret_for(settings.database_url, settings.token_secret)


def derive_token(workspace_id: UUID, message: Message) -> str:
    material = f"{workspace_id}:{message.task_id}:{message.digest}:{message.proof}".encode()
    return _b64(hmac.new(token_secret(), material, hashlib.sha256).digest())


def new_token(workspace_id: UUID, message: Message | None) -> str:
    if message is None:
        return _b64(secrets.token_bytes(TOKEN_BYTES))
    return derive_token(workspace_id, message)


@dataclass(frozen=True)
class TokenState:
    """What the hijack guard needs to know about a workspace's live tokens."""

    has_live: bool
    matched_id: UUID | None  # the live token the presented plaintext matches
    # A live token was issued by this same message (task id and payload) within the
    # redelivery window: the message is being redelivered or retried.
    issued_by_this_message: bool


def token_state(
    conn: Connection, workspace_id: UUID, presented: str | None, message: Message | None
) -> TokenState:
    rows = conn.execute(
        text(
            "SELECT id, token_hash, issue_key, "
            "       created_at > now() - make_interval(secs => :window) AS in_window "
            "FROM workspace_auth_tokens WHERE workspace_id = :ws AND revoked_at IS NULL"
        ),
        {"ws": workspace_id, "window": redelivery_window_seconds(get_settings())},
    ).all()
    wanted = hash_token(presented) if presented else None
    # A message that cannot prove it is a true redelivery never matches (module doc).
    key = message.issue_key if message is not None and message.answerable else None
    matched = next(
        (r.id for r in rows if wanted and hmac.compare_digest(r.token_hash, wanted)), None
    )
    return TokenState(
        has_live=bool(rows),
        matched_id=matched,
        issued_by_this_message=key is not None
        and any(r.in_window and r.issue_key == key for r in rows),
    )


def live_token_hashes(conn: Connection, workspace_ids: Collection[UUID]) -> dict[UUID, list[str]]:
    """The hashes of each workspace's live (unrevoked) tokens, for many workspaces in one
    statement (an edge checking many callers at once); a workspace with none is absent."""
    rows = conn.execute(
        text(
            "SELECT workspace_id, token_hash FROM workspace_auth_tokens "
            "WHERE workspace_id = ANY(CAST(:ids AS uuid[])) AND revoked_at IS NULL"
        ),
        {"ids": [str(ws) for ws in workspace_ids]},
    ).all()
    live: dict[UUID, list[str]] = {}
    for row in rows:
        live.setdefault(row.workspace_id, []).append(row.token_hash)
    return live


def matches(live_hashes: Collection[str], presented: str | None) -> bool:
    """Whether `presented` is one of the live tokens whose hashes are given."""
    if not presented:
        return False
    wanted = hash_token(presented)
    return any(hmac.compare_digest(h, wanted) for h in live_hashes)


UNAUTHORIZED_ERROR = "auth_token: missing or not valid for this workspace"


def is_authorized(has_live: bool, matched_id: UUID | None) -> bool:
    """The hijack guard: a workspace with a live token needs one of its own tokens.

    A workspace with no live token may proceed without one (first registration
    bootstraps). The caller has already refused removed workspaces.
    """
    return not has_live or matched_id is not None


def issue_token(conn: Connection, workspace_id: UUID, message: Message | None) -> str:
    token = new_token(workspace_id, message)
    conn.execute(
        text(
            "INSERT INTO workspace_auth_tokens (workspace_id, token_hash, prefix, issue_key) "
            "VALUES (:ws, :hash, :prefix, :key)"
        ),
        {
            "ws": workspace_id,
            "hash": hash_token(token),
            "prefix": token[:PREFIX_LENGTH],
            "key": message.issue_key if message else None,
        },
    )
    return token


def touch_tokens(conn: Connection, token_ids: Collection[UUID | str]) -> None:
    if token_ids:
        conn.execute(
            text(
                "UPDATE workspace_auth_tokens SET last_used_at = now() "
                "WHERE id = ANY(CAST(:ids AS uuid[])) AND (last_used_at IS NULL OR "
                "last_used_at < now() - make_interval(secs => :res))"
            ),
            # One array literal (a heartbeat batch touches up to a thousand tokens): a
            # bound list would go out as an ARRAY[...] of one constant per id.
            {"ids": "{" + ",".join(map(str, token_ids)) + "}", "res": LAST_USED_RESOLUTION_SECONDS},
        )


def revoke_tokens(conn: Connection, workspace_id: UUID) -> int:
    return conn.execute(
        text(
            "UPDATE workspace_auth_tokens SET revoked_at = now() "
            "WHERE workspace_id = :ws AND revoked_at IS NULL"
        ),
        {"ws": workspace_id},
    ).rowcount
