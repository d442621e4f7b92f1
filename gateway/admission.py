"""Who may open the WebSocket, and as what (CONTRACT §11), decided at the handshake.

- No `X-Workspace-ID`: a canvas. Its `Origin` must be allowed (`GATEWAY_ALLOWED_ORIGINS`;
  by default the gateway's own origin and `http://localhost:3000`; no `Origin`, as from
  a server-side client, is admitted), and when `GATEWAY_CANVAS_TOKEN` is set it must
  send that token as its bearer.
- `X-Workspace-ID`: an agent. Its bearer must be a live token of that very workspace
  (the same check as a message's, registry.ingestion.tokens, read-only here: the
  gateway writes nothing). No bootstrap exception: an agent without a valid token
  could name any workspace and read its peers' events.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import Connection, text

from registry.config import Settings
from registry.ingestion.tokens import token_state

DEV_CANVAS_ORIGIN = "http://localhost:3000"


@dataclass(frozen=True)
class Viewer:
    """An admitted connection: a canvas (workspace_id None) or an agent."""

    workspace_id: str | None = None
    token: str | None = None  # the agent's bearer, re-checked while connected

    @property
    def is_canvas(self) -> bool:
        return self.workspace_id is None


@dataclass(frozen=True)
class Refusal:
    status: int
    error: str


def bearer(authorization: str | None) -> str | None:
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def allowed_origins(settings: Settings, host: str | None, secure: bool) -> set[str]:
    configured = {o.strip().rstrip("/") for o in settings.gateway_allowed_origins.split(",")}
    configured.discard("")
    if configured:
        return configured
    own = {f"{'https' if secure else 'http'}://{host}"} if host else set()
    return {*own, DEV_CANVAS_ORIGIN}


def org_refusal(settings: Settings, sent: str | None) -> Refusal | None:
    """`X-Molecule-Org-Id` must name this installation's organisation (§11) when it is
    sent: a browser cannot add headers to a WebSocket, so a canvas sends none."""
    if settings.org_id and sent is not None and sent.strip() != settings.org_id:
        return Refusal(403, "X-Molecule-Org-Id does not match this registry")
    return None


def admit_canvas(
    settings: Settings, origin: str | None, host: str | None, secure: bool, token: str | None
) -> Viewer | Refusal:
    if origin is not None and origin.rstrip("/") not in allowed_origins(settings, host, secure):
        return Refusal(403, "origin not allowed")
    wanted = settings.gateway_canvas_token
    if wanted and not (token and hmac.compare_digest(token.encode(), wanted.encode())):
        return Refusal(401, "canvas token missing or not valid")
    return Viewer()


def agent_token_valid(conn: Connection, workspace_id: UUID, token: str | None) -> bool:
    """A live token of this workspace, which is known and not removed."""
    if not token:
        return False
    status = conn.execute(
        text("SELECT status FROM workspaces WHERE id = :id"), {"id": workspace_id}
    ).scalar()
    if status is None or status == "removed":
        return False
    return token_state(conn, workspace_id, token, None).matched_id is not None


def admit_agent(conn: Connection, raw_id: str, token: str | None) -> Viewer | Refusal:
    try:
        workspace_id = UUID(raw_id.strip())
    except ValueError:
        return Refusal(400, "X-Workspace-ID is not a workspace id")
    if not agent_token_valid(conn, workspace_id, token):
        return Refusal(401, "missing or invalid token for this workspace")
    return Viewer(str(workspace_id), token)
