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

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from registry.config import Settings
from registry.ingestion.tokens import hash_token, is_authorized, live_token_hashes, matches

# Enough for a large fleet's heartbeats within one cache period; the oldest go first
# (expired verdicts are dropped as new ones are written).
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


def lookup_engine(settings: Settings) -> Engine:
    """The token lookups' own small pool, in autocommit: one read-only statement per
    lookup (one every few milliseconds under a fleet's cache misses) needs no BEGIN and
    ROLLBACK round trips, and a pool of its own keeps that mode without switching a
    shared connection's isolation level at every checkout and checkin."""
    from sqlalchemy import create_engine

    from registry.db import session_options

    return create_engine(
        settings.database_url,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,  # a restarted PostgreSQL must not fail the next lookup
        pool_size=2,  # lookups run one at a time (group lookup); one spare
        max_overflow=2,
        connect_args={
            "connect_timeout": 5,
            "options": session_options(
                settings.db_statement_timeout_ms, settings.db_lock_timeout_ms
            ),
        },
    )


class TokenChecker:
    """`allowed(workspace_id, token)`: the registry's verdict, cached briefly.

    Checks that miss the cache are answered together: while one lookup is in flight,
    the misses that arrive wait for the next, which fetches the live token hashes of all
    their workspaces in one statement (group lookup, as group commit). A fleet whose
    agents heartbeat every 30 s misses the 5 s cache on nearly every call, so this is
    what keeps the check cheap at volume; a lone miss is looked up at once.
    """

    def __init__(
        self, engine: Engine, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: OrderedDict[tuple[UUID, str], tuple[float, bool]] = OrderedDict()
        self._waiting: dict[tuple[UUID, str], tuple[str | None, asyncio.Future[bool]]] = {}
        self._looking_up = False

    async def allowed(self, workspace_id: UUID, token: str | None) -> bool:
        key = (workspace_id, hash_token(token) if token else "")
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = (token, asyncio.get_running_loop().create_future())
            if not self._looking_up:
                self._looking_up = True
                asyncio.get_running_loop().create_task(self._look_up())
        return await asyncio.shield(waiting[1])

    async def _look_up(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                try:
                    live = await run_in_threadpool(self._live, {ws for ws, _ in batch})
                except Exception as exc:  # the database is down: every waiter hears it
                    for _token, future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                expires = self._clock() + self._ttl
                for key, (token, future) in batch.items():
                    verdict = self._verdict(live.get(key[0], []), token)
                    if self._ttl > 0:
                        self._cache[key] = (expires, verdict)
                        self._cache.move_to_end(key)
                    if not future.done():
                        future.set_result(verdict)
                self._evict()
        finally:
            self._looking_up = False

    def _evict(self) -> None:
        """Drop expired verdicts, and the oldest beyond MAX_ENTRIES. Entries are kept in
        the order they were written, so the expired ones are at the front: memory
        follows the calls of one cache period, not every token seen since start."""
        cache, now = self._cache, self._clock()
        while cache:
            oldest = next(iter(cache.values()))
            if oldest[0] > now and len(cache) <= MAX_ENTRIES:
                break
            cache.popitem(last=False)

    @staticmethod
    def _verdict(live_hashes: list[str], token: str | None) -> bool:
        if token is not None:
            # A token that is presented must be a live one of this workspace, even when
            # the workspace has none left (a revoked or foreign token is refused, not
            # taken for a bootstrap call).
            return matches(live_hashes, token)
        return is_authorized(bool(live_hashes), None)

    def _live(self, workspace_ids: set[UUID]) -> dict[UUID, list[str]]:
        with self._engine.connect() as conn:
            return live_token_hashes(conn, workspace_ids)
