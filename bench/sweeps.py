"""Sweeps benchmark: every sweep tick and the self-preservation check at fleet scale.

For each fleet size (default 100,000 and 1,000,000; `--fleets`), in a database of its
own (created and dropped here), seeded with one INSERT … SELECT generate_series:
1% backstop candidates, 1% stale external agents, 1% provisioning timeouts, 1% idle
workspaces due for hibernation, and the rest a realistic mix of statuses. Then:

- each statement's plan (EXPLAIN): the index it uses, and any Seq Scan on workspaces;
- the self-preservation check measured (`evaluate_now`) and reused as a sweep tick
  sees it (`evaluate_recent`), and each sweep entry point called
  `--runs` times in a row: median and max ms, rows changed per run;
- `prune_events` deleting `--events` old events (default 1,000,000): rows/s and the
  longest any batch held its locks; old unpublished events must survive.

It prints the figures and rewrites its section of docs/PERFORMANCE.md.
Run: `.venv/bin/python bench/sweeps.py [--fleets 100000,1000000] [--runs 7]`
(PostgreSQL and Redis up; uses database molecule_registry_bench_sweeps and a free pair of
Redis databases, reserved as the tests reserve theirs).
"""

from __future__ import annotations

import argparse
import atexit
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PERFORMANCE_MD,
    REDIS_BASE,
    create_database,
    drop_database,
    reserve_redis_dbs,
    service_env,
    write_section,
)

# bench/sweeps_ab.py rewrites this line to give each side a database of its own.
DB_NAME = "molecule_registry_bench_sweeps"
# A free pair, held (lock file open) for the life of the process, on any Redis.
_REDIS_DB, _, _REDIS_LOCK = reserve_redis_dbs()
BENCH_REDIS = f"{REDIS_BASE}/{_REDIS_DB}"
# Left empty for the next run: a pair holding keys counts as in use (bench/common.py).
atexit.register(lambda: redis.Redis.from_url(BENCH_REDIS).flushdb())
os.environ.update(
    service_env(
        DB_NAME,
        BENCH_REDIS,
        # Seeding a million rows can take longer than the default 30 s statement limit.
        DB_STATEMENT_TIMEOUT_MS="0",
    )
)

from sqlalchemy import text  # noqa: E402

from registry.config import reload_settings  # noqa: E402
from registry.db import get_engine, get_redis  # noqa: E402
from registry.events.retention import prune_events  # noqa: E402
from registry.liveness.selfpreservation import evaluate_now, evaluate_recent  # noqa: E402
from registry.sweeps import health  # noqa: E402
from registry.sweeps.backstop import sweep_backstop  # noqa: E402
from registry.sweeps.health import Candidate, mark_gone, sweep_remote_agents  # noqa: E402
from registry.sweeps.hibernation import sweep_hibernation  # noqa: E402
from registry.sweeps.plans import (  # noqa: E402
    explain,
    indexes_used,
    seq_scanned,
    sweep_statements,
)
from registry.sweeps.provisioning import sweep_provisioning  # noqa: E402
from registry.uow import unit_of_work  # noqa: E402

# k = g % 100 decides each seeded row: 0-3 are the 1% candidates of each sweep.
SEED_WORKSPACES = """
INSERT INTO workspaces (id, name, status, runtime, last_heartbeat_at, status_changed_at,
                        hibernation_idle_minutes, idle_since, active_tasks, created_at,
                        updated_at, tier)
SELECT gen_random_uuid(), 'bench-' || g,
       CASE WHEN k = 2 THEN 'provisioning'
            WHEN k BETWEEN 14 AND 17 THEN 'degraded'
            WHEN k BETWEEN 90 AND 94 THEN 'offline'
            WHEN k IN (95, 96) THEN 'hibernated'
            WHEN k = 97 THEN 'paused'
            WHEN k = 98 THEN 'removed'
            WHEN k = 99 THEN 'awaiting_agent'
            ELSE 'online' END,
       CASE WHEN k = 1 OR k BETWEEN 4 AND 13 OR k = 99 THEN 'external' ELSE 'langgraph' END,
       CASE WHEN k = 0 THEN now() - interval '10 minutes' - random() * interval '10 minutes'
            -- stale for the remote pass (REMOTE_LIVENESS_STALE_AFTER, 180 s), not yet for the backstop (210 s); set
            -- again right before the remote pass is timed (`prepare_remote`)
            WHEN k = 1 THEN now() - interval '195 seconds'
            WHEN k IN (2, 99) THEN NULL
            WHEN k BETWEEN 90 AND 98 THEN now() - interval '2 days'
            -- Live agents: seeding a million rows takes minutes, so their last heartbeat
            -- is put ahead of the seed to stay fresh for the whole run.
            ELSE now() + interval '30 minutes' - random() * interval '25 seconds' END,
       CASE WHEN k = 2 THEN now() - interval '1 hour' ELSE now() - interval '1 day' END,
       CASE WHEN k = 3 THEN 5 END,
       CASE WHEN k = 3 THEN now() - interval '1 hour' END,
       0, now() - interval '1 day', now() - interval '1 day',
       CASE WHEN k = 1 THEN 7 ELSE 1 END  -- tier 7 marks the remote candidates
FROM generate_series(1, :n) AS g, LATERAL (SELECT g % 100 AS k) AS kk
"""

SEED_EVENTS = """
INSERT INTO structure_events (event_type, workspace_id, payload, created_at)
SELECT 'WORKSPACE_ONLINE', NULL, '{"bench": true}'::jsonb,
       now() - interval '100 days' - g * interval '1 second'
FROM generate_series(1, :n) AS g
"""


# Targets of the sweeps issue: the check <= 5 ms, a marking tick <= 50 ms per batch at
# 1% candidates, and 100,000 vs 1,000,000 within 2x.
CHECK = "self-preservation check (just vacuumed)"
CHECK_DIRTY = "self-preservation check (pages rewritten since)"
# What a sweep tick pays on a fleet of 10,000 or more: the kept evaluation (Redis GET)
# and the shared state row, while the last measurement is younger than the reuse age.
CHECK_REUSED = "self-preservation check as a tick sees it (reused)"
MARKING = ("backstop (batch of 500)", "health: remote agents (batch of 200)")
TICKS = ("provisioning (batch of 500)", "health: one container page (200 asked, 2 gone)")


class NoopStopper:
    """Stops nothing, instantly: the hibernation figures are the registry's own cost."""

    def stop(self, workspace_id: UUID) -> None:
        return None


def fresh_database(fleet: int) -> float:
    """A migrated database seeded with `fleet` workspaces; the seconds the seed took.

    Not the context manager of bench/common.py: bench/sweeps_ab.py seeds a side's
    database through this in one process and times it in others.
    """
    create_database(DB_NAME)
    started = time.perf_counter()
    with get_engine().begin() as conn:
        conn.execute(text(SEED_WORKSPACES), {"n": fleet})
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE workspaces"))
        conn.execute(text("VACUUM ANALYZE structure_events"))
    get_redis().flushdb()
    return time.perf_counter() - started


def changed_of(result: Any) -> int:
    if isinstance(result, dict):
        return int(result.get("changed", 0))
    return 0


def container_page() -> int:
    """One page of the container pass: read 200 candidates, 1% of them gone, mark them."""
    with get_engine().connect() as conn:
        rows = conn.execute(
            health.CONTAINER_CANDIDATES,
            {"after": UUID(int=0), "until": health.MAX_UUID, "limit": health.BATCH_SIZE},
        ).all()
    gone = [Candidate(r.id, r.status_changed_at) for r in rows[:: max(len(rows) // 2, 1)][:2]]
    with unit_of_work() as uow:
        return len(mark_gone(uow, gone))


def provisioning_tick() -> dict[str, Any]:
    with unit_of_work() as uow:
        return sweep_provisioning(uow)


# Where a tick's time goes: the self-preservation check and the after-commit Redis
# pipeline (publication of the batch's events, key deletes, outbox clean-up) are timed
# apart by wrapping them; the rest is the marking transaction itself.
PARTS: dict[str, float] = {}


def _timed_part(module: Any, name: str, part: str) -> None:
    func = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            PARTS[part] = PARTS.get(part, 0.0) + (time.perf_counter() - started) * 1000

    setattr(module, name, wrapper)


def instrument() -> None:
    import registry.sweeps.backstop as backstop_module
    import registry.uow as uow_module

    _timed_part(backstop_module, "evaluate_recent", "check")
    _timed_part(health, "evaluate_recent", "check")
    _timed_part(uow_module, "run_after_commit", "publish")
    # The marking statement with its rows turned into events, before the commit.
    _timed_part(backstop_module, "mark_unreachable", "mark")
    _timed_part(health, "mark_unreachable", "mark")
    _timed_part(sys.modules[__name__], "sweep_provisioning", "mark")


# Run after each timed run (not timed): put the rows that run changed back, so every
# run finds the same 1% and marks a full batch, at every fleet size.
_RECENT = "status_changed_at > now() - interval '1 hour'"
RESTORE: dict[str, list[str]] = {
    "backstop": [f"UPDATE workspaces SET status = 'online' WHERE status = 'offline' AND {_RECENT}"],
    "remote": [
        f"UPDATE workspaces SET status = 'online' WHERE status = 'awaiting_agent' AND {_RECENT}"
    ],
    # Once, before the remote pass is timed: its candidates' last heartbeat 195 s ago
    # (stale for it, not for the backstop), however long the seed took.
    "remote-prepare": [
        "UPDATE workspaces SET last_heartbeat_at = now() - interval '195 seconds' WHERE tier = 7"
    ],
    "provisioning": [
        f"UPDATE workspaces SET status = 'provisioning' WHERE status = 'failed' AND {_RECENT}",
        "UPDATE workspaces SET status_changed_at = now() - interval '1 hour' "
        f"WHERE status = 'provisioning' AND {_RECENT}",
    ],
    "hibernation": [
        "UPDATE workspaces SET status = 'online', idle_since = now() - interval '1 hour' "
        f"WHERE status = 'hibernated' AND {_RECENT}"
    ],
}


def restore(key: str | None) -> None:
    if key is None:
        return
    with get_engine().begin() as conn:
        for sql in RESTORE[key]:
            conn.execute(text(sql))


def measure_fleet(fleet: int, runs: int) -> dict[str, Any]:
    seed_seconds = fresh_database(fleet)
    settings = reload_settings()
    print(f"\n== fleet {fleet:,}: seeded in {seed_seconds:.1f} s", flush=True)
    ticks: dict[str, tuple[list[float], list[int], float, float, float]] = {}
    entries: list[tuple[str, Callable[[], Any], str | None]] = [
        (CHECK, lambda: evaluate_now(settings), None),
        (CHECK_REUSED, lambda: evaluate_recent(settings), None),
        ("backstop (batch of 500)", lambda: sweep_backstop(settings), "backstop"),
        (
            "health: remote agents (batch of 200)",
            lambda: sweep_remote_agents(settings),
            "remote",
        ),
        (
            "health: one container page (200 asked, 2 gone)",
            lambda: {"changed": container_page()},
            "backstop",
        ),
        ("provisioning (batch of 500)", provisioning_tick, "provisioning"),
        (
            "hibernation (up to 100, no-op stopper)",
            lambda: sweep_hibernation(NoopStopper()),
            "hibernation",
        ),
        # Again, now that the runs above rewrote rows all over the table: a live fleet's
        # pages are never all-visible (heartbeats rewrite every row), so the at-risk
        # count visits the heap for each at-risk row. This is the realistic figure.
        (CHECK_DIRTY, lambda: evaluate_now(settings), None),
    ]
    for name, func, key in entries:
        if key == "remote":
            restore("remote-prepare")
        func()  # warm the plan cache and the buffers touched; not counted
        restore(key)
        times, changed, parts = [], [], []
        for _ in range(runs):
            PARTS.clear()
            started = time.perf_counter()
            result = func()
            times.append((time.perf_counter() - started) * 1000)
            parts.append(
                (PARTS.get("check", 0.0), PARTS.get("publish", 0.0), PARTS.get("mark", 0.0))
            )
            changed.append(changed_of(result))
            restore(key)
        check = statistics.median(p[0] for p in parts)
        publish = statistics.median(p[1] for p in parts)
        mark = statistics.median(p[2] for p in parts)
        ticks[name] = (times, changed, check, publish, mark)
        print(
            f"  {name:<50} min {min(times):7.1f}  median {statistics.median(times):7.1f}"
            f"  max {max(times):7.1f} ms"
            f"  (check {check:.1f}, mark {mark:.1f}, publish {publish:.1f})  changed {changed}",
            flush=True,
        )
    # The plans, once the runs above have left events behind (the history statements
    # are planned on a table that is not empty).
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE structure_events"))
    plans = {}
    with get_engine().connect() as conn:
        for statement in sweep_statements(settings):
            plan = explain(conn, statement)
            plans[statement.name] = (
                sorted(indexes_used(plan)),
                sorted(seq_scanned(plan) & {"workspaces"}),
            )
    for name, (indexes, seqs) in plans.items():
        print(f"  plan {name:<42} {', '.join(indexes) or '-'}{'  SEQ SCAN' if seqs else ''}")
    return {"fleet": fleet, "seed_seconds": seed_seconds, "plans": plans, "ticks": ticks}


def measure_prune(events: int) -> dict[str, Any]:
    """On the last fleet's database: `events` old events, 1,000 of them unpublished."""
    with get_engine().begin() as conn:
        conn.execute(text(SEED_EVENTS), {"n": events})
        conn.execute(
            text(
                "INSERT INTO event_outbox (event_id, created_at) "
                "SELECT id, created_at FROM structure_events ORDER BY id LIMIT 1000"
            )
        )
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE structure_events"))
    started = time.perf_counter()
    run = prune_events(reload_settings(), max_batches=10**9)
    seconds = time.perf_counter() - started
    with get_engine().connect() as conn:
        kept = conn.execute(
            text("SELECT count(*) FROM structure_events e JOIN event_outbox o ON o.event_id = e.id")
        ).scalar_one()
    result = {
        "deleted": run.deleted,
        "seconds": seconds,
        "rows_per_second": run.deleted / seconds if seconds else 0.0,
        "batches": run.batches,
        "longest_batch_ms": run.longest_batch_seconds * 1000,
        "unpublished_kept": kept,
    }
    print(
        f"\n== prune_events: {run.deleted:,} deleted in {seconds:.1f} s "
        f"({result['rows_per_second']:,.0f} rows/s), {run.batches} batches, longest "
        f"{result['longest_batch_ms']:.0f} ms; unpublished kept: {kept}/1000",
        flush=True,
    )
    return result


def report(
    fleets: list[dict[str, Any]],
    prune: dict[str, Any] | None,
    command: str,
    load: tuple[float, float],
) -> str:
    sizes = [f["fleet"] for f in fleets]
    lines = [
        "## Sweeps — `bench/sweeps.py`",
        "",
        f"Command: `{command}`. Each fleet in a fresh database seeded with one "
        "`INSERT … SELECT generate_series`: 1% backstop candidates (container-backed, last "
        "heartbeat 10-20 min ago), 1% stale external agents, 1% provisioning past its "
        "timeout, 1% idle workspaces due for hibernation, the rest a mix of live and "
        "parked statuses; then `VACUUM ANALYZE`. Each entry point is called once to warm "
        "up, then timed in a row (the marking ones mark a new batch each run). Times are "
        "wall clock from Python, including the commit, the Redis pipeline that publishes "
        "the batch's events and the outbox clean-up. 2-core machine shared with other "
        f"work (1-minute load average {load[0]:.1f} when the run started, {load[1]:.1f} "
        "when it ended): compare ratios and minimums, not absolute figures. The "
        "'of which' column splits a tick: the self-preservation check it ran first "
        "(`evaluate_recent`: on a fleet of 10,000 or more, mostly the kept evaluation); "
        "the marking statement with its rows turned into events (before the commit); and "
        "the after-commit Redis pipeline (one script that PUBLISHes and XADDs every "
        "event, one DEL for the batch's keys) with the outbox clean-up. The rest is the "
        "commit and the sweep's own Python.",
        "",
        "| entry point | "
        + " | ".join(f"{n:,}: min / median / max ms" for n in sizes)
        + f" | {sizes[-1]:,}: of which check / mark / publish (median ms) | changed per run |"
        + (" ratio of medians |" if len(sizes) > 1 else ""),
        "|---|" + "---|" * len(sizes) + "---|---|" + ("---|" if len(sizes) > 1 else ""),
    ]
    for name in fleets[0]["ticks"]:
        cells = []
        for f in fleets:
            times = f["ticks"][name][0]
            cells.append(f"{min(times):.1f} / {statistics.median(times):.1f} / {max(times):.1f}")
        _, changed, check, publish, mark = fleets[-1]["ticks"][name]
        row = (
            f"| {name} | "
            + " | ".join(cells)
            + f" | {check:.1f} / {mark:.1f} / {publish:.1f} | {', '.join(map(str, changed))} |"
        )
        if len(sizes) > 1:
            first = statistics.median(fleets[0]["ticks"][name][0])
            last = statistics.median(fleets[-1]["ticks"][name][0])
            row += f" {last / first:.2f} |" if first else " - |"
        lines.append(row)
    lines += ["", *targets(fleets)]
    lines += [
        "",
        f"Plans at {sizes[-1]:,} workspaces (EXPLAIN; the same statements "
        "tests/test_sweep_plans.py checks on a 30,000-row fleet):",
        "",
        "| statement | index used | Seq Scan on workspaces |",
        "|---|---|---|",
    ]
    for name, (indexes, seqs) in fleets[-1]["plans"].items():
        lines.append(
            f"| {name} | {', '.join(indexes) or '— (no workspaces read)'} | "
            f"{'YES' if seqs else 'no'} |"
        )
    if prune:
        lines += [
            "",
            f"`prune_events` on {prune['deleted'] + prune['unpublished_kept']:,} events older "
            f"than the window ({prune['unpublished_kept']:,} of them still in the outbox): "
            f"{prune['deleted']:,} deleted in {prune['seconds']:.1f} s — "
            f"**{prune['rows_per_second']:,.0f} rows/s**, {prune['batches']} batches of 5,000, "
            f"each its own transaction; the longest held its locks for "
            f"**{prune['longest_batch_ms']:.0f} ms**. Unpublished events kept: "
            f"{prune['unpublished_kept']:,}.",
        ]
    return "\n".join(lines)


def targets(fleets: list[dict[str, Any]]) -> list[str]:
    big = fleets[-1]
    lines = [
        f"Targets at {big['fleet']:,} workspaces (median, and min — the same work on a quiet "
        "moment of this machine):",
        "",
    ]

    def verdict(name: str, limit: float) -> str:
        times = big["ticks"][name][0]
        median = statistics.median(times)
        met = "met" if median <= limit else ("met at min" if min(times) <= limit else "NOT met")
        return f"- {name}: median {median:.1f} ms, min {min(times):.1f} ms (target {limit:g} ms): {met}"

    lines.append(verdict(CHECK, 5))
    lines.append(verdict(CHECK_DIRTY, 5))
    lines.append(verdict(CHECK_REUSED, 5))
    for name in MARKING + TICKS:
        lines.append(verdict(name, 50))
    if len(fleets) > 1:
        small = fleets[0]
        worst = max(
            statistics.median(big["ticks"][n][0]) / statistics.median(small["ticks"][n][0])
            for n in (CHECK, CHECK_DIRTY, CHECK_REUSED, *MARKING, *TICKS)
        )
        lines.append(
            f"- {small['fleet']:,} vs {big['fleet']:,}: the largest ratio of medians is "
            f"{worst:.2f} (target 2): {'met' if worst <= 2 else 'NOT met'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default="100000,1000000")
    parser.add_argument("--fleet", type=int, help="one fleet size only")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--events", type=int, default=1_000_000, help="0 skips prune_events")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    sizes = [args.fleet] if args.fleet else [int(s) for s in args.fleets.split(",")]
    instrument()
    load_at_start = os.getloadavg()[0]
    try:
        fleets = [measure_fleet(size, args.runs) for size in sizes]
        prune = measure_prune(args.events) if args.events else None
    finally:
        drop_database(DB_NAME)
    command = "python bench/sweeps.py " + " ".join(sys.argv[1:])
    section = report(fleets, prune, command.strip(), (load_at_start, os.getloadavg()[0]))
    if not args.no_write:
        write_section(PERFORMANCE_MD, "bench/sweeps.py", section)
    print("\n" + section)


if __name__ == "__main__":
    main()
