"""Marking ticks before and after a change, in one run: a git ref against this tree.

On a shared, noisy machine two benchmark runs minutes apart are not comparable. This
runs both code versions in the same minutes instead: each side gets its own database
(its own migrations, the same `bench/sweeps.py` seed at `--fleet`), then the sides take
turns, `--rounds` times (order alternating), each turn a fresh process that times
`--runs` ticks of every marking entry point exactly as `bench/sweeps.py` does (a warm-up
tick, then timed ticks, the changed rows put back after each). It prints the medians,
the minimums and the ratio after/before per tick, with the load average, for two
measures: wall-clock time, and CPU time (this process plus every PostgreSQL backend
connected to the side's database, from /proc; its mean per tick), which waiting for a
CPU on a busy machine does not inflate.

Run: `.venv/bin/python bench/sweeps_ab.py --ref <commit> [--fleet 1000000] [--rounds 6]`
(PostgreSQL and Redis up; databases molecule_registry_bench_ab_{before,after} and
the Redis database each side's bench/sweeps.py picks, all dropped or flushed at the end). Both trees must have a `bench/sweeps.py` of
this shape (SEED_WORKSPACES, RESTORE, the entry points).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TICKS = ("backstop", "remote", "provisioning")


def load_bench(tree: str, db: str) -> types.ModuleType:
    """That tree's bench/sweeps.py, pointed at database `db`, its registry importable."""
    sys.path.insert(0, tree)
    source = Path(tree, "bench", "sweeps.py").read_text()
    source = source.replace('DB_NAME = "molecule_registry_bench_sweeps"', f'DB_NAME = "{db}"')
    module = types.ModuleType("bench_sweeps_side")
    module.__file__ = str(Path(tree, "bench", "sweeps.py"))
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # our own file
    return module


def backend_cpu_ms(db: str) -> float:
    """CPU time used so far by the PostgreSQL backends connected to `db` (from /proc)."""
    from sqlalchemy import text

    from registry.db import get_engine

    with get_engine().connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :db"), {"db": db}
        ).scalars()
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def worker(args: argparse.Namespace) -> None:
    bench = load_bench(args.tree, args.db)
    if args.seed:
        print(json.dumps({"seed_seconds": bench.fresh_database(args.seed)}))
        return
    from registry.config import reload_settings

    settings = reload_settings()
    entries = {
        "backstop": (lambda: bench.sweep_backstop(settings), "backstop"),
        "remote": (lambda: bench.sweep_remote_agents(settings), "remote"),
        "provisioning": (bench.provisioning_tick, "provisioning"),
    }
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for name in args.ticks.split(","):
        func, key = entries[name]
        if key == "remote":
            bench.restore("remote-prepare")
        func()  # warm-up, not counted
        bench.restore(key)
        times[name], cpu[name] = [], []
        for _ in range(args.runs):
            # The /proc reads stay outside the timed part; the query that lists the
            # backends costs both sides the same.
            cpu_before = backend_cpu_ms(args.db)
            process_before = time.process_time()
            started = time.perf_counter()
            func()
            times[name].append((time.perf_counter() - started) * 1000)
            process_ms = (time.process_time() - process_before) * 1000
            cpu[name].append(process_ms + backend_cpu_ms(args.db) - cpu_before)
            bench.restore(key)
    print(json.dumps({"times": times, "cpu": cpu, "load": os.getloadavg()[0]}))


def run_side(tree: str, db: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [PYTHON, __file__, "--worker", "--tree", tree, "--db", db, *extra],
        capture_output=True,
        check=False,
        text=True,
    )
    if done.returncode != 0:  # say why, not only that it failed
        raise SystemExit(f"{tree}: turn failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="the 'before' commit (git ref of this repository)")
    parser.add_argument("--fleet", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ticks", default=",".join(TICKS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.ref:
        parser.error("--ref is required")
    with tempfile.TemporaryDirectory(prefix="sweeps-ab-") as before_tree:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.ref], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", before_tree], input=archive, check=True)
        sides = {
            "before": (before_tree, "molecule_registry_bench_ab_before"),
            "after": (str(ROOT), "molecule_registry_bench_ab_after"),
        }
        try:
            compare(args, sides)
        finally:
            drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
            for _, db in sides.values():
                subprocess.run(
                    ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", drop.format(db)],
                    check=False,
                )


def compare(args: argparse.Namespace, sides: dict[str, tuple[str, str]]) -> None:
    for side, (tree, db) in sides.items():
        seeded = run_side(tree, db, "--seed", str(args.fleet))
        print(f"{side}: {args.fleet:,} workspaces seeded in {seeded['seed_seconds']:.1f} s")
    ticks = args.ticks.split(",")
    times: dict[tuple[str, str], list[float]] = {(s, t): [] for s in sides for t in ticks}
    cpu: dict[tuple[str, str], list[float]] = {(s, t): [] for s in sides for t in ticks}
    loads: list[float] = []
    for round_no in range(args.rounds):
        order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
        for side in order:
            tree, db = sides[side]
            result = run_side(tree, db, "--ticks", args.ticks, "--runs", str(args.runs))
            loads.append(result["load"])
            for tick, values in result["times"].items():
                times[(side, tick)].extend(values)
                cpu[(side, tick)].extend(result["cpu"][tick])
        print(f"round {round_no + 1}/{args.rounds} done (load {loads[-1]:.1f})", flush=True)
    print(
        f"\n{args.fleet:,} workspaces, {args.rounds} rounds x {args.runs} ticks per side, "
        f"before = {args.ref}; load average during the run: min {min(loads):.1f}, "
        f"median {statistics.median(loads):.1f}, max {max(loads):.1f}\n"
    )
    print(
        "| tick | before: wall median (min) ms | after: wall median (min) ms | after / before "
        "| before: CPU mean ms | after: CPU mean ms | after / before |"
    )
    print("|---|---|---|---|---|---|---|")
    for tick in ticks:
        before, after = times[("before", tick)], times[("after", tick)]
        # /proc counts CPU in clock ticks (10 ms): one tick's figure is coarse, their
        # mean over many ticks is not.
        cpu_before = statistics.mean(cpu[("before", tick)])
        cpu_after = statistics.mean(cpu[("after", tick)])
        print(
            f"| {tick} | {statistics.median(before):.1f} ({min(before):.1f}) | "
            f"{statistics.median(after):.1f} ({min(after):.1f}) | "
            f"{statistics.median(after) / statistics.median(before):.2f} | "
            f"{cpu_before:.1f} | {cpu_after:.1f} | {cpu_after / cpu_before:.2f} |"
        )


if __name__ == "__main__":
    main()
