"""The fleet report (CONTRACT §13): incidents, self-preservation episodes, the least
available and the flapping workspaces, and the fleet's availability distribution.

Availability follows registry.insight.history; at fleet scale it is computed in SQL,
one pass over the window's status events and the workspace rows (see `_MOVING`): a
workspace without a status event in the window kept its current status all along.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import pairwise
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, text

from registry.config import get_settings
from registry.insight.flapping import recent_changes
from registry.insight.history import DOWN, STATUS_EVENT_TYPES, UP
from registry.statuses import STATUS_AFTER_EVENT, EventType

LEAST_AVAILABLE = 10
REPORT_WORK_MEM = "256MB"
# Upper-open buckets of the distribution, best first: (label, lowest percent).
BUCKETS: tuple[tuple[str, float], ...] = (
    ("100%", 100.0),
    ("99.9-100%", 99.9),
    ("99-99.9%", 99.0),
    ("95-99%", 95.0),
    ("90-95%", 90.0),
    ("<90%", 0.0),
)

# Each status event type's code (its place here) and the status it leaves.
_AFTER: list[str] = [str(STATUS_AFTER_EVENT[EventType(t)]) for t in STATUS_EVENT_TYPES]
_CODE_SQL = (
    "CASE e.event_type "
    + " ".join(f"WHEN '{t}' THEN {code}" for code, t in enumerate(STATUS_EVENT_TYPES))
    + " END"
)
# The status a status event came from: a degradation always comes from online; a
# heartbeat's recovery says `recovered_from`; a registration's WORKSPACE_ONLINE has
# `previous_status` in its row (migration 0007), read first so that its payload (the
# agent card, often TOASTed) is never opened; the others say `previous_status`.
_BEFORE_SQL = {
    EventType.WORKSPACE_ONLINE: "COALESCE(e.previous_status, e.payload->>'recovered_from')",
    EventType.WORKSPACE_DEGRADED: None,
}


def _codes(group: frozenset[str]) -> str:
    return ", ".join(str(code) for code, status in enumerate(_AFTER) if status in group)


def _delta_sql(group: frozenset[str]) -> str:
    """Per event: 1 if it entered `group`, -1 if it left it, else 0, as one CASE on its
    type with the group inlined (one lookup of where it came from at most)."""

    def member(status: str) -> str:
        return str(int(status in group))

    branches = []
    for event_type, after in STATUS_AFTER_EVENT.items():
        before = _BEFORE_SQL.get(event_type, "e.payload->>'previous_status'")
        if before is None:
            branch = f"{int(after in group) - int('online' in group)}"
        else:
            whens = " ".join(f"WHEN '{s}' THEN {member(s)}" for s in sorted(group))
            branch = f"{member(after)} - CASE {before} {whens} ELSE 0 END"
        branches.append(f"WHEN '{event_type}' THEN {branch}")
    return f"CASE e.event_type {' '.join(branches)} ELSE 0 END"


# No sort, no per-workspace timeline, no join: up time is the integral of "is up",
# which changes at each event by d = (up after - up before). Anchored at the end, on
# the status the workspace's last event in the window left (as `history` does):
#   up time = (up at the end - sum of d) * span + sum of d * now - sum of (d * its time)
# where span runs from the window's start, or from the workspace's creation when that
# is later; likewise for counted (up or down) time. Every workspace row joins the
# window's events as one more row (`ws`: its creation, and whether its current status
# is up or down): a workspace without an event kept its current status all along;
# events of a workspace without a row count for nothing. The last event is found
# without ordering: max(t * 8 + its code) carries the code of the newest. So: one
# hash aggregate, one group per workspace, its rows' expressions computed by the
# parallel workers (OFFSET 0 keeps them below the aggregate; a partial aggregate
# saves nothing when nearly every workspace has its own group). Times are whole
# microseconds since the window's start held in float8: integers below 2^53, so every
# sum is exact (as numeric's would be) at float speed.
_US = "round(date_part('epoch', {} - CAST(:since AS timestamptz)) * 1000000)"
_NOW = "CAST(:now_us AS float8)"
# A workspace row's `ws`: (its creation within the window, else 0) * 4 + 1 + its
# current status's class (0 neither, 1 down, 2 up); 0 for events without a row.
_CLASS_SQL = (
    f"CASE WHEN w.status IN ({', '.join(repr(str(s)) for s in sorted(UP))}) THEN 2 "
    f"WHEN w.status IN ({', '.join(repr(str(s)) for s in sorted(DOWN))}) THEN 1 ELSE 0 END"
)
_WS_SQL = f"GREATEST(0, {_US.format('w.created_at')}) * 4 + 1 + {_CLASS_SQL}"


def _seconds_in(group: frozenset[str], current_class: str, sums: str, product_sums: str) -> str:
    """A workspace's time in `group` over the window (microseconds), from its group's
    aggregates (see above)."""
    at_end = (
        f"CASE WHEN last IS NULL THEN CAST(cls {current_class} AS int) "
        f"ELSE CAST(last % 8 IN ({_codes(group)}) AS int) END"
    )
    return f"({at_end} - {sums}) * ({_NOW} - born) + {sums} * {_NOW} - {product_sums}"


_MOVING = text(
    f"""
    WITH grouped AS (
        SELECT workspace_id, sum(d_up) AS su, sum(d_up * t) AS sut,
               sum(d_cnt) AS sc, sum(d_cnt * t) AS sct,
               CAST(max(t * 8 + code) AS bigint) AS last, CAST(max(ws) AS bigint) AS ws
        FROM (SELECT e.workspace_id, {_US.format("e.created_at")} AS t,
                     {_delta_sql(UP)} AS d_up, {_delta_sql(UP | DOWN)} AS d_cnt,
                     {_CODE_SQL} AS code, 0 AS ws
              FROM structure_events e
              WHERE e.created_at >= :since AND e.event_type = ANY(:types)
                AND e.workspace_id >= CAST(:lo AS uuid) AND e.workspace_id <= CAST(:hi AS uuid)
              UNION ALL
              SELECT w.id, 0, 0, 0, NULL, {_WS_SQL} FROM workspaces w
              WHERE w.id >= CAST(:lo AS uuid) AND w.id <= CAST(:hi AS uuid)
              OFFSET 0) ev
        GROUP BY workspace_id
    ), per AS MATERIALIZED (
        SELECT workspace_id, u, c,
               CASE WHEN c > 0 THEN LEAST(100.0, GREATEST(0.0, 100.0 * u / c)) END AS pct
        FROM (SELECT workspace_id,
                     {_seconds_in(UP, "= 2", "su", "sut")} AS u,
                     {_seconds_in(UP | DOWN, ">= 1", "sc", "sct")} AS c
              FROM (SELECT workspace_id, su, sut, sc, sct, last,
                           ws / 4 AS born, ws % 4 - 1 AS cls
                    FROM grouped WHERE ws > 0) g
              OFFSET 0) p
    )
    SELECT CASE WHEN c <= 0 THEN -1 WHEN u >= c THEN 0 WHEN 1000 * u >= 999 * c THEN 1
                WHEN 100 * u >= 99 * c THEN 2 WHEN 100 * u >= 95 * c THEN 3
                WHEN 10 * u >= 9 * c THEN 4 ELSE 5 END AS bucket,
           count(*) AS n, COALESCE(sum(pct), 0) AS pct_sum, NULL::json AS least
    FROM per GROUP BY 1
    UNION ALL
    SELECT NULL, NULL, NULL,
           (SELECT COALESCE(json_agg(json_build_object(
                       'workspace_id', l.workspace_id, 'availability_percent', l.pct)), '[]')
            FROM (SELECT workspace_id, round(CAST(pct AS numeric), 3) AS pct FROM per
                  WHERE c > 0 AND u < c ORDER BY per.pct, workspace_id LIMIT :limit) l)
    """
)
_NAMES = text(
    "SELECT id::text AS id, name, status FROM workspaces WHERE id = ANY(CAST(:ids AS uuid[]))"
)
_CLOCK = text("SELECT now()")
_EXPORT = text("SELECT pg_export_snapshot()")

# The fleet is split into REPORT_PARTS ranges of ids, each aggregated by a transaction
# of its own on the snapshot of the report's transaction, at once: PostgreSQL's parallel
# aggregate cannot split by group (its workers' partial groups are nearly as many as
# their rows), so the grouping runs on one core unless the query is split by hand,
# as pg_dump -j does. Unsplit (REPORT_PARTS=1), the statement's scan keeps its
# parallel workers.
_ALL_IDS = ("00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")


def id_ranges(parts: int) -> list[tuple[str, str]]:
    """`parts` contiguous, inclusive ranges of UUIDs covering them all."""
    cuts = [(1 << 128) * i // parts for i in range(parts + 1)]
    return [(str(UUID(int=lo)), str(UUID(int=hi - 1))) for lo, hi in pairwise(cuts)]


def _session_settings(conn: Connection) -> None:
    # One group per workspace (the fleet): room to aggregate in memory instead of
    # spilling to disk, for this transaction only.
    conn.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
    # Compiled expressions (JIT, above PostgreSQL's usual cost threshold: a fleet of
    # thousands) without LLVM's inlining and optimisation: those cost seconds on this
    # statement's large CASEs; plain compilation saves ~15%.
    for setting in ("jit = on", "jit_inline_above_cost = -1", "jit_optimize_above_cost = -1"):
        conn.execute(text(f"SET LOCAL {setting}"))


def _aggregate_part(engine: Engine, snapshot: str, params: dict[str, Any]) -> list[Any]:
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as part:
        part.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        _session_settings(part)
        # The parts are the parallelism (about one per core): parallel workers of
        # their own would only pass the same rows through one more queue.
        part.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        rows = part.execute(_MOVING, params).all()
        part.rollback()
        return rows


def _aggregate(conn: Connection, params: dict[str, Any], parts: int) -> list[Any]:
    """`_MOVING`'s rows for the whole fleet, in `parts` ranges at once when > 1."""
    if parts <= 1:
        _session_settings(conn)
        lo, hi = _ALL_IDS
        return conn.execute(_MOVING, {**params, "lo": lo, "hi": hi}).all()
    snapshot = conn.execute(_EXPORT).scalar_one()
    ranges = id_ranges(parts)
    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="report") as pool:
        futures = [
            pool.submit(_aggregate_part, conn.engine, snapshot, {**params, "lo": lo, "hi": hi})
            for lo, hi in ranges
        ]
        return [row for future in futures for row in future.result()]


def availability(
    conn: Connection, since: datetime, limit: int, *, parts: int | None = None
) -> dict[str, Any]:
    """The fleet's availability distribution, mean, and least available workspaces
    (`parts`: REPORT_PARTS by default)."""
    parts = parts or get_settings().report_parts
    params = {
        "since": since,
        "types": STATUS_EVENT_TYPES,
        "limit": limit,
        # The report transaction's clock, in the statement's units.
        "now_us": round((conn.execute(_CLOCK).scalar_one() - since).total_seconds() * 1e6),
    }
    counts = [0] * len(BUCKETS)
    pct_sum = 0.0
    least: list[tuple[float, str]] = []
    for row in _aggregate(conn, params, parts):
        if row.bucket is None:
            least += [(float(w["availability_percent"]), w["workspace_id"]) for w in row.least]
        elif row.bucket >= 0:  # -1: counted neither way
            counts[row.bucket] += row.n
            pct_sum += float(row.pct_sum)
    least = sorted(least)[:limit]
    names = {r.id: r for r in conn.execute(_NAMES, {"ids": [ws for _, ws in least]})}
    total = sum(counts)
    return {
        "least": [
            {
                "workspace_id": ws,
                "name": names[ws].name,
                "status": names[ws].status,
                "availability_percent": pct,
            }
            for pct, ws in least
        ],
        "workspaces": total,
        "mean_percent": None if total == 0 else round(pct_sum / total, 3),
        "distribution": {label: n for (label, _), n in zip(BUCKETS, counts, strict=True)},
    }


_INCIDENTS = text(
    """
    SELECT id, kind, signature, sample_error, opened_at, resolved_at, members, peak_members
    FROM incidents
    WHERE resolved_at IS NULL OR resolved_at >= :since OR opened_at >= :since
    ORDER BY resolved_at IS NOT NULL, opened_at DESC
    LIMIT 100
    """
)
_SELF_PRESERVATION = text(
    """
    SELECT payload, created_at FROM structure_events
    -- A fleet event (no workspace): read on the workspace index's null entries, never
    -- through the window's status events.
    WHERE workspace_id IS NULL AND event_type = 'REGISTRY_SELF_PRESERVATION'
      AND created_at >= :since
    ORDER BY id
    """
)
_FLAPPING = text(
    "SELECT id::text AS id, name, status FROM workspaces WHERE flapping ORDER BY id LIMIT 100"
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def self_preservation_episodes(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    episodes: list[dict[str, Any]] = []
    for row in conn.execute(_SELF_PRESERVATION, {"since": since}):
        if row.payload.get("active"):
            episodes.append(
                {"start": _iso(row.created_at), "end": None, "reason": row.payload.get("reason")}
            )
        elif episodes and episodes[-1]["end"] is None:
            episodes[-1]["end"] = _iso(row.created_at)
        else:  # it began before the window
            episodes.append(
                {"start": None, "end": _iso(row.created_at), "reason": row.payload.get("reason")}
            )
    return episodes


def fleet_report(
    conn: Connection, since: datetime, *, limit: int = LEAST_AVAILABLE
) -> dict[str, Any]:
    fleet = availability(conn, since, limit)
    incidents = conn.execute(_INCIDENTS, {"since": since}).all()
    flapping_rows = conn.execute(_FLAPPING).all()
    changes = recent_changes(conn, get_settings(), [r.id for r in flapping_rows])
    return {
        "since": since.isoformat(),
        "incidents": [
            {
                "incident_id": r.id,
                "kind": r.kind,
                "signature": r.signature,
                "sample_error": r.sample_error,
                "state": "open" if r.resolved_at is None else "resolved",
                "opened_at": _iso(r.opened_at),
                "resolved_at": _iso(r.resolved_at),
                "members": r.members,
                "peak_members": r.peak_members,
            }
            for r in incidents
        ],
        "self_preservation": self_preservation_episodes(conn, since),
        "least_available": fleet["least"],
        "flapping": [
            {"workspace_id": r.id, "name": r.name, "status": r.status, "changes": changes[r.id]}
            for r in flapping_rows
        ],
        "availability": {
            "workspaces": fleet["workspaces"],
            "mean_percent": fleet["mean_percent"],
            "distribution": fleet["distribution"],
        },
    }
