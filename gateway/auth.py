"""The token check at the edge (CONTRACT §10, §4.1 step 1), with a short cache.

The rule is the registry's (`registry.ingestion.tokens`): a workspace with a live token
needs one of its own tokens; one without may call without (bootstrap). A token that is
sent must be valid (CONTRACT §10) in any case: a revoked or foreign one is a 401. The gateway
answers 401 at once from it, and still forwards the token: the worker checks again, so
the cache only makes the common case cheap, never a stale verdict binding.

A verdict is kept at most `GATEWAY_TOKEN_CACHE_SECONDS` (≤ 5 s), so a token revoked in
the registry is refused by every gateway within that. Keys hold the token's SHA-256,
never the plaintext.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from registry.ingestion.tokens import hash_token, is_authorized, token_state

# Enough for a large fleet's heartbeats within one cache period; the oldest go first.
MAX_ENTRIES = 200_000


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without the header.

    Raises ValueError for a header that is present but not a bearer token.
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ValueError("Authorization: expected `Bearer <token>`")
    return token


class TokenChecker:
    """`allowed(workspace_id, token)`: the registry's verdict, cached briefly."""

    def __init__(
        self, engine: Engine, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: OrderedDict[tuple[UUID, str], tuple[float, bool]] = OrderedDict()

    async def allowed(self, workspace_id: UUID, token: str | None) -> bool:
        key = (workspace_id, hash_token(token) if token else "")
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        verdict = await run_in_threadpool(self._check, workspace_id, token)
        if self._ttl > 0:
            self._cache[key] = (now + self._ttl, verdict)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)
        return verdict

    def _check(self, workspace_id: UUID, token: str | None) -> bool:
        with self._engine.connect() as conn:
            state = token_state(conn, workspace_id, token, None)
        if token is not None:
            # A token that is presented must be a live one of this workspace, even when
            # the workspace has none left (a revoked or foreign token is refused, not
            # taken for a bootstrap call).
            return state.matched_id is not None
        return is_authorized(state.has_live, None)
