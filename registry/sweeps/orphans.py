"""Orphan containers (CONTRACT §5): stop containers no live workspace owns, free their volumes,
and revoke the stale tokens of containers that are gone.

Three independent passes over the containers named `ws-<full id>` or, legacy,
`ws-<first 12 chars of id>` (see registry.sweeps.containers); each lists the
containers itself and runs under its own guard, so an error in one never stops the
others:

1. `removed`: every container so named, labelled or not, whose prefix matches
   workspace rows that are all `removed` (a workspace deleted while its container
   kept running) → stop the container and, only if the stop succeeded, remove its
   volumes (`-configs`, `-claude-sessions`). A volume error is only logged.
2. `unknown`: only containers carrying both labels `molecule.platform.managed=true`
   and `molecule.platform.instance=<PLATFORM_INSTANCE_ID>`, whose id or prefix
   matches no row at all (the database was wiped or restored from an old backup) →
   stop and remove the volumes, same rule. Without both labels a container the
   registry has no row for may be anyone's — another platform instance sharing the
   engine included — so it is left alone.

3. `stale_tokens`: a live token of a container-backed workspace (runtime neither
   `external` nor `mock`) that is not `removed` or `provisioning`, whose container
   does not exist (no container, running or stopped, carries its `ws-<id>` or legacy
   `ws-<prefix>` name), and that has not
   been used for 5 minutes (`COALESCE(last_used_at, created_at)`), is revoked: the
   container that held it is gone, and a recreated container must be able to
   bootstrap again (CONTRACT §4.1 step 1). One UPDATE revokes them, with every
   condition (staleness included) inside it, so a token issued a moment ago by a
   restart in progress is never revoked. A listing error skips the pass (no answer is
   not "no containers"); an empty listing is a real answer. The pass reads every live
   token of a container-backed workspace once per sweep, the same order of work as
   the container listing it needs anyway.

A legacy prefix matching both a removed and a live row (two ids sharing 12
characters) is left alone: a live workspace's container is never touched on a guess.

Only keys shaped like a full UUID's text or its first 12 characters (8 hex digits,
`-`, 3 hex digits) are ever put in a query or acted on: `_` and `%` would be LIKE
wildcards, and a container whose name is neither is not one of ours whatever its
labels say. All the keys of a pass go out in ONE query: each is a range of the
primary key (a single value for a full id).

One sweep stops working at its deadline (30 s by default) and reports it; the next
sweep carries on. Only one orphan sweep runs at a time in the whole cluster (a
PostgreSQL advisory lock): a second one started meanwhile reports `skipped`.
Without a container backend (`CONTAINER_BACKEND=none`) the sweep is disabled and
says so once per process.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from registry.db import get_engine
from registry.statuses import CONTAINERLESS_RUNTIMES, Status
from registry.sweeps.containers import (
    ID_PREFIX_LENGTH,
    ContainerError,
    ContainerReaper,
    ManagedContainer,
)

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_SECONDS = 30.0
# pg_try_advisory_lock key for "an orphan sweep is running" (ASCII "molorphn").
ADVISORY_LOCK_KEY = 0x6D6F6C6F7270686E

_disabled_logged: list[bool] = []  # the "disabled" line is logged once per process

_LEGACY_PREFIX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{3}$")
_FULL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LEGACY_LOW, _LEGACY_HIGH = "0-0000-0000-000000000000", "f-ffff-ffff-ffffffffffff"

# A key is a range of UUIDs (uuid order is the order of their lowercase text): a full
# id is a range of one, a legacy prefix of 8 hex digits, `-` and 3 hex digits the ids
# starting with it. The primary key finds the rows; the LIKE states the rule. No
# index on `id::text` needed: every status change would have to maintain it.
_STATUSES_BY_PREFIX = text(
    """
    SELECT p.prefix, w.status
    FROM unnest(CAST(:prefixes AS text[]), CAST(:lows AS uuid[]), CAST(:highs AS uuid[]))
         AS p(prefix, low, high)
    JOIN workspaces w
      ON w.id BETWEEN p.low AND p.high
     AND w.id::text LIKE p.prefix || '%'
    """
)


def _is_key(value: str) -> bool:
    return _FULL_ID.match(value) is not None or _LEGACY_PREFIX.match(value) is not None


def workspace_prefix(container: ManagedContainer) -> str | None:
    """The container's workspace key (full id or legacy prefix), lowercased; None when it
    is shaped like neither."""
    prefix = container.workspace_prefix.lower()
    return prefix if _is_key(prefix) else None


def _bounds(key: str) -> tuple[str, str]:
    if _FULL_ID.match(key):
        return key, key
    return key + _LEGACY_LOW, key + _LEGACY_HIGH


def statuses_by_prefix(conn: Connection, prefixes: list[str]) -> dict[str, list[str]]:
    """Statuses of the rows each key matches; a key matching no row is absent."""
    for prefix in prefixes:  # the last guard before a query: never a wildcard
        if not _is_key(prefix):
            raise ValueError(f"refusing to query unsafe prefix {prefix!r}")
    found: dict[str, list[str]] = {}
    if prefixes:
        keys = sorted(set(prefixes))
        bounds = [_bounds(key) for key in keys]
        params = {
            "prefixes": keys,
            "lows": [low for low, _ in bounds],
            "highs": [high for _, high in bounds],
        }
        for row in conn.execute(_STATUSES_BY_PREFIX, params):
            found.setdefault(row.prefix, []).append(row.status)
    return found


def _owned_by_removed_rows(statuses: list[str] | None) -> bool:
    return statuses is not None and all(s == Status.REMOVED for s in statuses)


def _owned_by_no_row(statuses: list[str] | None) -> bool:
    return statuses is None


@dataclass
class PassReport:
    stopped: int = 0
    volumes_removed: int = 0
    stop_errors: int = 0
    volume_errors: int = 0
    error: str | None = None


@dataclass
class TokenPassReport:
    revoked: int = 0
    error: str | None = None


@dataclass
class OrphanReport:
    removed: PassReport = field(default_factory=PassReport)
    unknown: PassReport = field(default_factory=PassReport)
    stale_tokens: TokenPassReport = field(default_factory=TokenPassReport)
    ignored: int = 0
    deadline_exceeded: bool = False

    def result(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "changed": self.removed.stopped + self.unknown.stopped + self.stale_tokens.revoked,
            "removed": asdict(self.removed),
            "unknown": asdict(self.unknown),
            "stale_tokens": asdict(self.stale_tokens),
            "ignored": self.ignored,
            "deadline_exceeded": self.deadline_exceeded,
        }


class _Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock()

    def passed(self) -> bool:
        return self.clock() - self.started >= self.seconds


def _reap(reaper: ContainerReaper, container: ManagedContainer, report: PassReport) -> None:
    """Stop, then (only if stopped) remove the volumes; failures counted and logged."""
    try:
        reaper.stop_container(container.name)
    except ContainerError as exc:
        report.stop_errors += 1
        log.warning("orphan sweep: could not stop %s (%s); volume kept", container.name, exc)
        return
    report.stopped += 1
    try:
        reaper.remove_volume(container.workspace_prefix)
    except ContainerError as exc:
        report.volume_errors += 1
        log.warning("orphan sweep: stopped %s but its volume stays: %s", container.name, exc)
        return
    report.volumes_removed += 1


class _Listings:
    """The engine's listings, each asked once per sweep (its answer or its error reused):
    the stale-token pass judges "container exists" on the same by-name listing as the
    removed pass."""

    def __init__(self, reaper: ContainerReaper) -> None:
        self.reaper = reaper
        self._answers: dict[str, list[ManagedContainer] | Exception] = {}

    def _ask(self, key: str, call: Callable[[], list[ManagedContainer]]) -> list[ManagedContainer]:
        if key not in self._answers:
            try:
                self._answers[key] = call()
            except Exception as exc:
                self._answers[key] = exc
        answer = self._answers[key]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def by_name(self) -> list[ManagedContainer]:
        return self._ask("by_name", self.reaper.list_workspace_containers)

    def managed(self) -> list[ManagedContainer]:
        return self._ask("managed", self.reaper.list_managed)


@dataclass(frozen=True)
class _Pass:
    name: str  # the OrphanReport field that tallies it
    candidates: Callable[[_Listings], list[ManagedContainer]]
    owned: Callable[[list[str] | None], bool]  # statuses matched by the prefix → orphan?
    why: str


REMOVED_PASS = _Pass(
    "removed",
    lambda listings: listings.by_name(),  # by name: labelled or not
    _owned_by_removed_rows,
    "its workspace was removed",
)
UNKNOWN_PASS = _Pass(
    "unknown",
    lambda listings: listings.managed(),  # both labels make a rowless one ours
    _owned_by_no_row,
    "no workspace row matches it: database wiped?",
)


def _run_pass(
    spec: _Pass,
    listings: _Listings,
    conn: Connection,
    report: OrphanReport,
    deadline: _Deadline,
) -> None:
    tally: PassReport = getattr(report, spec.name)
    try:
        if deadline.passed():
            report.deadline_exceeded = True
            return
        ours: list[tuple[str, ManagedContainer]] = []
        ignored = 0
        for container in spec.candidates(listings):
            prefix = workspace_prefix(container)
            if prefix is None:
                ignored += 1
                log.debug("orphan sweep: %s is not named after a workspace; ignored", container)
            else:
                ours.append((prefix, container))
        report.ignored = max(report.ignored, ignored)  # the passes' lists overlap
        statuses = statuses_by_prefix(conn, [prefix for prefix, _ in ours])
        for prefix, container in ours:
            if not spec.owned(statuses.get(prefix)):
                continue
            if deadline.passed():
                report.deadline_exceeded = True
                return
            log.warning("orphan sweep: stopping %s (%s)", container.name, spec.why)
            _reap(listings.reaper, container, tally)
    except Exception as exc:  # one pass failing must never stop the other
        tally.error = f"{type(exc).__name__}: {exc}"
        log.exception("orphan sweep: the %r pass failed", spec.name)


# Pass 3. Every condition is in the UPDATE itself: a token issued or used since the
# listing (a restart in progress) is not stale, and a workspace that went back to
# `provisioning` or was removed meanwhile is excluded, at the moment of revoking.
STALE_TOKEN_SECONDS = 300
_REVOKE_STALE_TOKENS = text(
    f"""
    UPDATE workspace_auth_tokens t SET revoked_at = now()
    FROM workspaces w
    WHERE t.workspace_id = w.id
      AND t.revoked_at IS NULL
      AND w.runtime NOT IN ({", ".join(f"'{r}'" for r in CONTAINERLESS_RUNTIMES)})
      AND w.status NOT IN ('{Status.REMOVED}', '{Status.PROVISIONING}')
      AND COALESCE(t.last_used_at, t.created_at) < now() - make_interval(secs => :stale_after)
      -- Its container exists under the current name or the legacy one.
      AND NOT (w.id::text = ANY(CAST(:existing AS text[])))
      AND NOT (left(w.id::text, {ID_PREFIX_LENGTH}) = ANY(CAST(:existing AS text[])))
    RETURNING t.workspace_id, t.prefix
    """
)


def revoke_stale_tokens(
    conn: Connection, existing_prefixes: list[str], *, stale_after: float = STALE_TOKEN_SECONDS
) -> list[tuple[str, str]]:
    """Revoke the stale tokens of workspaces whose container is not among `existing_prefixes`.

    Returns (workspace id, token display prefix) per revoked token.
    """
    for prefix in existing_prefixes:  # the last guard before a query
        if not _is_key(prefix):
            raise ValueError(f"refusing to query unsafe prefix {prefix!r}")
    rows = conn.execute(
        _REVOKE_STALE_TOKENS,
        {"existing": sorted(set(existing_prefixes)), "stale_after": stale_after},
    ).all()
    return [(str(r.workspace_id), r.prefix) for r in rows]


def _run_token_pass(
    listings: _Listings, conn: Connection, report: OrphanReport, deadline: _Deadline
) -> None:
    tally = report.stale_tokens
    try:
        if deadline.passed():
            report.deadline_exceeded = True
            return
        # Running or stopped: a stopped container (a hibernated workspace) still holds
        # its token and will start again with it. A listing error raises: pass skipped.
        existing = [
            prefix for prefix in map(workspace_prefix, listings.by_name()) if prefix is not None
        ]
        revoked = revoke_stale_tokens(conn, existing)
        tally.revoked = len(revoked)
        for workspace_id, token_prefix in revoked:
            log.warning(
                "orphan sweep: revoked stale token %s… of workspace %s (its container is "
                "gone; a recreated container can bootstrap again)",
                token_prefix,
                workspace_id,
            )
    except Exception as exc:  # one pass failing must never stop the others
        tally.error = f"{type(exc).__name__}: {exc}"
        log.exception("orphan sweep: the 'stale_tokens' pass failed; no token revoked")


def sweep_orphans(
    reaper: ContainerReaper | None,
    *,
    engine: Engine | None = None,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The three passes, one sweep at a time cluster-wide, within the deadline."""
    if reaper is None:
        if not _disabled_logged:
            _disabled_logged.append(True)
            log.warning(
                "orphan-container sweep disabled: no container backend (CONTAINER_BACKEND=none)"
            )
        return {"status": "ok", "changed": 0, "disabled": "no container backend"}

    deadline = _Deadline(deadline_seconds, clock)
    report = OrphanReport()
    # Autocommit: no transaction stays open across the Docker calls; the session-level
    # advisory lock lives as long as this connection, and dies with it.
    with (engine or get_engine()).connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        if not conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        ).scalar_one():
            log.info("orphan sweep skipped: another one is running")
            return {"status": "ok", "changed": 0, "skipped": "another orphan sweep is running"}
        try:
            listings = _Listings(reaper)
            for spec in (REMOVED_PASS, UNKNOWN_PASS):
                _run_pass(spec, listings, conn, report, deadline)
            _run_token_pass(listings, conn, report, deadline)
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            except Exception:
                # Closing the session is what releases the lock then; never pool it.
                raw.invalidate()
                log.warning("orphan sweep: could not release its advisory lock; connection dropped")
    if report.deadline_exceeded:
        log.warning(
            "orphan sweep stopped at its %.0f s deadline; the next one continues",
            deadline_seconds,
        )
    return report.result()
