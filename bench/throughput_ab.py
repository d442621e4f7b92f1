"""Heartbeat throughput of several code versions in one run: `bench/throughput.py --quick`
in each tree, turns alternating, medians per tree.

On a shared, noisy machine two benchmark runs minutes apart are not comparable; the
ratios each run measures against its own anchors (the no-op Celery task, the raw
set-based UPDATE) are, and alternating the trees spreads the machine's moods over all
of them. Each tree is a checkout with its own `.venv` (`scripts/venv.sh`), for example
a `git worktree add` of the commit before a change.

Run: `.venv/bin/python bench/throughput_ab.py --tree before=/path/a --tree after=. [--rounds 2]`
(`--render DIR` re-renders the saved results of an earlier run). It prints the table
and, unless `--no-write`, rewrites its section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PERFORMANCE_MD, write_section  # noqa: E402

QUICK = ["--quick", "--brokers", "amqp", "--rss-seconds", "0", "--no-write"]


def run_turns(trees: dict[str, Path], rounds: int, out: Path) -> None:
    for round_no in range(1, rounds + 1):
        for name, tree in trees.items():
            saved = out / f"{name}-{round_no}.json"
            print(f"round {round_no}: {name} ({tree})", flush=True)
            subprocess.run(
                [
                    str(tree / ".venv/bin/python"),
                    "bench/throughput.py",
                    *QUICK,
                    "--save",
                    str(saved),
                ],
                cwd=tree,
                check=True,
                stdout=subprocess.DEVNULL,
            )


def figures(saved: Path) -> dict[str, float]:
    results = json.loads(saved.read_text())["results"]
    ratios = results["ratios"]
    rate = {
        key: results[key]["rate"]
        for key in ("noop_amqp", "per_msg_amqp", "batch_amqp", "raw_update")
    }
    return {
        "per_message": rate["per_msg_amqp"],
        "noop": rate["noop_amqp"],
        # The run's own ratios pair each repetition with its anchor; their median is
        # what bench/throughput.py quotes.
        "per_message_share": statistics.median(ratios["per_msg_amqp|noop_amqp"]),
        "batch": rate["batch_amqp"],
        "raw": rate["raw_update"],
        "batch_share": statistics.median(ratios["batch_amqp|raw_update"]),
        "lone_ms": statistics.median(results["lone_amqp"]),
    }


def render(names: list[str], out: Path, command: str) -> str:
    rows = {
        "`registry.heartbeat` per message / no-op Celery task": ("per_message_share", "{:.0%}"),
        "`registry.heartbeat_batch` (1,000 per message) / raw set-based UPDATE": (
            "batch_share",
            "{:.0%}",
        ),
        "`registry.heartbeat`, one per message (messages/s)": ("per_message", "{:,.0f}"),
        "`registry.heartbeat_batch` (heartbeats/s)": ("batch", "{:,.0f}"),
        "raw set-based UPDATE (rows/s)": ("raw", "{:,.0f}"),
        "lone heartbeat on an idle worker (ms, median of 50)": ("lone_ms", "{:.1f}"),
    }
    runs = {name: [figures(p) for p in sorted(out.glob(f"{name}-*.json"))] for name in names}
    lines = [
        f"Command: `{command}`; each cell is the median over the turns (each turn's own figure in brackets) (each turn "
        "`bench/throughput.py " + " ".join(QUICK) + "`, RabbitMQ, the documented heartbeat "
        "worker); the shares are the ones to compare, each measured against its own "
        f"anchor in the same turn. Turns per tree: {', '.join(f'{n} {len(r)}' for n, r in runs.items())}.",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, (key, fmt) in rows.items():
        cells = []
        for name in names:
            values = [r[key] for r in runs[name]]
            cells.append(
                fmt.format(statistics.median(values))
                + " ("
                + ", ".join(fmt.format(v) for v in values)
                + ")"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH, in turn order")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--render", type=Path, help="render the saved turns in DIR instead")
    parser.add_argument("--command", default=" ".join(sys.argv), help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    if not trees:
        parser.error("give at least one --tree NAME=PATH")
    out = args.render or Path(f"/tmp/throughput_ab_{int(time.time())}")
    if args.render is None:
        out.mkdir(parents=True)
        run_turns(trees, args.rounds, out)
    text = render(list(trees), out, args.command)
    print(text)
    if not args.no_write:
        write_section(PERFORMANCE_MD, "bench/throughput_ab.py", text)


if __name__ == "__main__":
    main()
