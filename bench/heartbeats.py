"""Heartbeat path benchmark: prints its figures and writes them into docs/PERFORMANCE.md.

Measures, on one fleet in one run:
1. apply_heartbeats throughput (domain level: validation + one transaction + Redis
   pipeline), in batches of 1 (what the task does today) and of 100;
2. the same with the sweep index on last_heartbeat_at dropped, so every heartbeat
   UPDATE can be HOT — the ratio tells what the index costs the hot path;
3. the backstop's candidate query with and without that index;
4. end to end: heartbeat messages drained by a real Celery worker subprocess.

Run: `.venv/bin/python bench/heartbeats.py [--fleet 5000] [--heartbeats 20000]`
(needs PostgreSQL and Redis up; uses database molecule_registry_bench and Redis db 1).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PERFORMANCE_MD,
    fresh_database,
    seed_fleet,
    service_env,
    write_section,
)

BENCH_DB = "molecule_registry_bench"
BENCH_REDIS = "redis://127.0.0.1:6379/1"
os.environ.update(service_env(BENCH_DB, BENCH_REDIS))

from sqlalchemy import text  # noqa: E402

from registry.db import get_engine, get_redis  # noqa: E402
from registry.ingestion.heartbeats import apply_heartbeats  # noqa: E402
from registry.ingestion.payloads import HeartbeatPayload, parse_payload  # noqa: E402
from registry.uow import unit_of_work  # noqa: E402

LIVE_INDEX_DDL = (
    "CREATE INDEX ix_workspaces_live_heartbeat ON workspaces (last_heartbeat_at) "
    "WHERE status IN ('online', 'degraded')"
)


def heartbeat(ws: str, n: int) -> HeartbeatPayload:
    return parse_payload(
        HeartbeatPayload,
        {
            "workspace_id": ws,
            "error_rate": 0.01,
            "active_tasks": n % 3,
            "uptime_seconds": n,
            "current_task": f"task-{n % 7}",
            "monthly_spend": 100 + n,
        },
    )


def update_stats() -> tuple[int, int]:
    # Backends flush their statistics when they exit: close the pool, then read.
    get_engine().dispose()
    time.sleep(0.3)
    with get_engine().connect() as conn:
        row = conn.execute(
            text(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relname = 'workspaces'"
            )
        ).one()
    return row.n_tup_upd, row.n_tup_hot_upd


def run_apply(ids: list[str], count: int, batch: int) -> dict[str, float]:
    rng = random.Random(7)
    payloads = [heartbeat(rng.choice(ids), n) for n in range(count)]
    upd0, hot0 = update_stats()
    start = time.perf_counter()
    for i in range(0, count, batch):
        with unit_of_work() as uow:
            apply_heartbeats(uow, payloads[i : i + batch])
    elapsed = time.perf_counter() - start
    upd1, hot1 = update_stats()
    updates = max(1, upd1 - upd0)
    return {"per_second": count / elapsed, "hot_share": (hot1 - hot0) / updates}


def backstop_query_ms() -> float:
    with get_engine().connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN (ANALYZE, FORMAT TEXT) SELECT id FROM workspaces w "
                "WHERE w.status IN ('online','degraded') "
                "AND w.last_heartbeat_at < now() - interval '210 seconds'"
            )
        ).all()
    text_plan = "\n".join(r[0] for r in plan)
    match = re.search(r"Execution Time: ([0-9.]+) ms", text_plan)
    return float(match.group(1)) if match else float("nan")


def end_to_end(ids: list[str], count: int) -> float:
    """Queue `count` heartbeat messages, then measure a prefork worker draining them."""
    from workers.app import app

    client = get_redis()
    client.delete("registry.heartbeats")
    # Count only what this phase applies: every row starts at uptime 0.
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE workspaces SET uptime_seconds = 0"))
    expected = min(count, len(ids))
    with app.producer_or_acquire() as producer:
        for n in range(count):
            app.send_task(
                "registry.heartbeat",
                args=[{"workspace_id": ids[n % len(ids)], "uptime_seconds": n + 1}],
                queue="registry.heartbeats",
                producer=producer,
            )
    worker = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/celery"),
            "-A",
            "workers.app",
            "worker",
            "-Q",
            "registry.heartbeats",
            "--pool",
            "prefork",
            "-c",
            "2",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, "METRICS_PORT": "0"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while True:
            with get_engine().connect() as conn:
                done, seconds = conn.execute(
                    text(
                        "SELECT count(*), "
                        "extract(epoch FROM max(last_heartbeat_at) - min(last_heartbeat_at)) "
                        "FROM workspaces WHERE uptime_seconds > 0"
                    )
                ).one()
            if done >= expected:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {expected} heartbeats applied in 600 s")
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    # First to last application, on the database clock: worker start-up is excluded.
    return (expected - 1) / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=5000)
    parser.add_argument("--heartbeats", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()

    with fresh_database(BENCH_DB):
        get_redis().flushdb()
        ids = list(seed_fleet(args.fleet, tokens=False))
        results = measure(ids, args.heartbeats, args.messages)
    report(args.fleet, results)


def measure(ids: list[str], heartbeats: int, messages: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["indexed_b1"] = run_apply(ids, heartbeats // 4, 1)
    results["indexed_b100"] = run_apply(ids, heartbeats, 100)
    results["backstop_indexed_ms"] = backstop_query_ms()
    with get_engine().begin() as conn:
        conn.execute(text("DROP INDEX ix_workspaces_live_heartbeat"))
    results["hot_b1"] = run_apply(ids, heartbeats // 4, 1)
    results["hot_b100"] = run_apply(ids, heartbeats, 100)
    results["backstop_unindexed_ms"] = backstop_query_ms()
    with get_engine().begin() as conn:
        conn.execute(text(LIVE_INDEX_DDL))
    results["e2e_per_second"] = end_to_end(ids, messages)
    return results


def report(fleet: int, results: dict[str, Any]) -> None:
    ib1, ib100 = results["indexed_b1"], results["indexed_b100"]
    hb1, hb100 = results["hot_b1"], results["hot_b100"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core CI machine "
        f"(fleet {fleet}, PostgreSQL and Redis on localhost), "
        "by `.venv/bin/python bench/heartbeats.py`.",
        "",
        "| heartbeat path | batch 1 (per s) | batch 100 (per s) | HOT updates |",
        "|---|---:|---:|---:|",
        f"| schema as shipped (index on last_heartbeat_at) | {ib1['per_second']:.0f} | "
        f"{ib100['per_second']:.0f} | {ib100['hot_share']:.0%} |",
        f"| index dropped (every update may be HOT) | {hb1['per_second']:.0f} | "
        f"{hb100['per_second']:.0f} | {hb100['hot_share']:.0%} |",
        "",
        f"- Ratio index-dropped / shipped: batch 1 "
        f"{hb1['per_second'] / ib1['per_second']:.2f}x, batch 100 "
        f"{hb100['per_second'] / ib100['per_second']:.2f}x.",
        f"- Batch 100 / batch 1 (shipped schema): {ib100['per_second'] / ib1['per_second']:.1f}x.",
        f"- Backstop candidate query over the fleet: {results['backstop_indexed_ms']:.2f} ms "
        f"with the index, {results['backstop_unindexed_ms']:.2f} ms without.",
        f"- End to end (messages on Redis, one prefork worker, 2 processes): "
        f"{results['e2e_per_second']:.0f} heartbeats/s.",
    ]
    section = "\n".join(lines)
    print(section)
    write_section(PERFORMANCE_MD, "bench/heartbeats.py", section)


if __name__ == "__main__":
    main()
