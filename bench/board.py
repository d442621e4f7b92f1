"""Fleet board benchmark: prints its figures and writes them into docs/PERFORMANCE.md.

For each fleet size (default 5,000: 3,000 online, 400 degraded, 600 offline, 300
awaiting agent, 12 failed, the rest provisioning/paused/hibernated), seeded straight
into PostgreSQL, it serves the board in this process and opens it in headless
Chromium (Debian's, through Playwright), then measures:

1. load: time from navigation start to the first paint of the useful view (the
   page's `board-painted` mark: counts, map and the first screen of problem tiles
   drawn), and to the whole fleet loaded and the event stream open ("live");
2. bytes transferred for that load (encoded, as on the wire, all requests);
3. input latency under a flood of status changes (default 100/s, each through the
   real path: one transaction with its structure_events row, outbox, stream): while
   it runs, the bench types into the search box, clicks status filters and scrolls
   the list; each input's latency is the time from the event to the frame after its
   handler ran (p50/p95/max), long tasks (> 50 ms) are counted, and the renderer's
   main-thread time per second of flood is read from CDP (all tasks; script; style and
   layout): steadier than a p95 of ~60 inputs on a shared machine;
4. renderer memory: JS heap, DOM nodes (CDP Performance.getMetrics) and the
   renderer process's resident set (/proc), after the flood.

Run: `.venv/bin/python bench/board.py [--fleet 5000[,50000]] [--flood 20] [--rate 100]`
(needs PostgreSQL, Redis and /usr/bin/chromium; uses database
molecule_registry_bench_board and a Redis database pair reserved like the tests').
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PERFORMANCE_MD,
    REDIS_BASE,
    fresh_database,
    reserve_redis_dbs,
    service_env,
    vacuum_analyze,
    write_section,
)

BENCH_DB = "molecule_registry_bench_board"


REDIS_DB, BROKER_DB, _REDIS_LOCK = reserve_redis_dbs()
os.environ.update(service_env(BENCH_DB, f"{REDIS_BASE}/{REDIS_DB}", f"{REDIS_BASE}/{BROKER_DB}"))

from playwright.sync_api import sync_playwright  # noqa: E402
from sqlalchemy import text  # noqa: E402

from gateway.board_serve import BoardServer  # noqa: E402
from registry.db import get_engine, get_redis  # noqa: E402
from registry.statuses import EventType  # noqa: E402
from registry.uow import record_event_on_commit, unit_of_work  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
# The fleet of 5,000, scaled for other sizes.
MIX = {
    "online": 3000,
    "degraded": 400,
    "offline": 600,
    "awaiting_agent": 300,
    "failed": 12,
    "provisioning": 88,
    "paused": 100,
    "hibernated": 500,
}
RUNTIMES = ("langgraph", "crewai", "autogen", "external", "claude-code")
WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper")
BATCH = 10
EVENT_OF = {
    "online": EventType.WORKSPACE_ONLINE,
    "degraded": EventType.WORKSPACE_DEGRADED,
    "offline": EventType.WORKSPACE_OFFLINE,
}

# Injected before the page's own script: input latency (event -> the frame after its
# handler) and long tasks, kept on window for the bench to read.
PROBE = """
window.__bench = { latencies: [], longTasks: [] };
for (const type of ["keydown", "pointerdown", "wheel"]) {
  window.addEventListener(type, (event) => {
    const t0 = event.timeStamp;
    requestAnimationFrame(() => setTimeout(() => {
      window.__bench.latencies.push(performance.now() - t0);
    }, 0));
  }, { capture: true, passive: true });
}
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__bench.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""


def seed_mixed_fleet(size: int) -> dict[str, list[str]]:
    """`size` workspaces in the issue's proportions; ids per status."""
    scale = size / sum(MIX.values())
    counts = {status: max(1, round(n * scale)) for status, n in MIX.items()}
    counts["online"] += size - sum(counts.values())
    rng = random.Random(11)
    rows: list[dict[str, Any]] = []
    by_status: dict[str, list[str]] = {}
    for status, n in counts.items():
        for _ in range(n):
            ws = str(uuid.uuid4())
            by_status.setdefault(status, []).append(ws)
            rows.append({"id": ws, "status": status, "runtime": rng.choice(RUNTIMES)})
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["name"] = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i:05d}"
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, runtime, last_heartbeat_at, "
                "registered_at, active_tasks) VALUES (:id, :name, :status, :runtime, now(), "
                "now(), 0)"
            ),
            rows,
        )
    vacuum_analyze("workspaces")
    return by_status


class Flood(threading.Thread):
    """Status changes at `rate` per second through the real path (row + event, one commit)."""

    def __init__(self, ids: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.ids = ids
        self.rate = rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        # Ten changes per transaction, ten transactions a second: what a sweep or a busy
        # worker commits; each change still has its own row update and event.
        engine, client = get_engine(), get_redis()
        rng = random.Random(7)
        started = time.monotonic()
        while not self.stop.is_set():
            due = started + self.sent / self.rate
            if (wait := due - time.monotonic()) > 0:
                self.stop.wait(wait)
            with unit_of_work(engine, client) as uow:
                for _ in range(BATCH):
                    ws = rng.choice(self.ids)
                    status = rng.choice(("online", "degraded", "offline"))
                    uow.conn.execute(
                        text("UPDATE workspaces SET status = :s WHERE id = :id"),
                        {"s": status, "id": ws},
                    )
                    record_event_on_commit(uow, EVENT_OF[status], uuid.UUID(ws), {"bench": True})
            self.sent += BATCH


def renderer_rss_mb() -> float:
    """Largest resident set among Chromium renderers started by this process."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    me, best = os.getpid(), 0
    for pid in parents:
        ancestor = pid
        while ancestor in parents and ancestor not in (me, 0, 1):
            ancestor = parents[ancestor]
        if ancestor != me:
            continue
        try:
            cmdline = (Path(f"/proc/{pid}") / "cmdline").read_bytes()
            status = (Path(f"/proc/{pid}") / "status").read_text()
        except OSError:
            continue
        if b"--type=renderer" in cmdline and (m := re.search(r"VmRSS:\s+(\d+)", status)):
            best = max(best, int(m.group(1)))
    return best / 1024


def main_thread(cdp: Any) -> dict[str, float]:
    """Seconds the renderer's main thread has spent so far: all tasks, script, style+layout."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {
        "busy": metrics.get("TaskDuration", 0.0),
        "script": metrics.get("ScriptDuration", 0.0),
        "render": metrics.get("RecalcStyleDuration", 0.0) + metrics.get("LayoutDuration", 0.0),
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def interact(page: Any, seconds: float) -> int:
    """What an operator does while the fleet churns: search, filter, scroll, clear."""
    actions = 0
    ends = time.monotonic() + seconds
    chips = ["failed", "offline", "degraded", "awaiting_agent"]
    while time.monotonic() < ends:
        step = actions % 6
        if step in (0, 1, 2):
            page.focus("#search")
            page.keyboard.press("Backspace" if step == 2 else "e")
        elif step == 3:
            page.click(f'#legend .chip[data-status="{chips[(actions // 6) % 4]}"]')
        elif step == 4:
            page.mouse.move(400, 600)
            page.mouse.wheel(0, 900)
        else:
            page.click(f'#legend .chip[data-status="{chips[(actions // 6) % 4]}"]')
        actions += 1
        time.sleep(0.25)
    return actions


def flood_and_inputs(
    context: Any, page: Any, ids: list[str], seconds: float, rate: float
) -> dict[str, Any]:
    """Input latency, long tasks and the renderer's main-thread time under a flood."""
    # The main-thread time (CDP's cumulative task, script, style and layout durations)
    # is steadier than a p95 of ~60 inputs on a shared machine.
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    before = main_thread(cdp)
    page.evaluate("window.__bench.latencies = []; window.__bench.longTasks = []")
    flood = Flood(ids, rate)
    flood.start()
    started = time.monotonic()
    actions = interact(page, seconds)
    flood.stop.set()
    after = main_thread(cdp)
    elapsed = time.monotonic() - started
    flood.join(timeout=10)
    probe = page.evaluate("window.__bench")
    latencies = probe["latencies"]
    result = {f"main_{key}_ms_per_s": (after[key] - before[key]) * 1000 / elapsed for key in before}
    result.update(
        flood_changes=flood.sent,
        flood_rate=flood.sent / seconds,
        inputs=actions,
        input_p50_ms=percentile(latencies, 50),
        input_p95_ms=percentile(latencies, 95),
        input_max_ms=max(latencies, default=0.0),
        long_tasks=len(probe["longTasks"]),
        longest_task_ms=max(probe["longTasks"], default=0.0),
    )
    return result


def time_get(url: str, runs: int = 5) -> float:
    """Median ms for a gzip GET, body read (the server's query, JSON and gzip)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(size: int, flood_seconds: float, rate: float) -> dict[str, Any]:
    """One run on a fleet of `size` in a database of its own, dropped after."""
    with fresh_database(BENCH_DB):
        get_redis().flushdb()
        return measure_board(size, seed_mixed_fleet(size), flood_seconds, rate)


def measure_board(
    size: int, by_status: dict[str, list[str]], flood_seconds: float, rate: float
) -> dict[str, Any]:
    server = BoardServer("127.0.0.1", 0, get_engine(), get_redis())
    server.start()
    # The machine is shared: its load (1-minute average) is part of the figures.
    result: dict[str, Any] = {"fleet": size, "load_start": os.getloadavg()[0]}
    try:
        result["first_page_server_ms"] = time_get(server.url + "api/snapshot?limit=1000")
        result["whole_snapshot_server_ms"] = time_get(server.url + "api/snapshot")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.add_init_script(PROBE)
            transferred = [0]

            def count(request: Any) -> None:
                sizes = request.sizes()
                transferred[0] += sizes["responseBodySize"] + sizes["responseHeadersSize"]

            page.on("requestfinished", count)
            page.goto(server.url, wait_until="commit")
            page.wait_for_function(
                "document.documentElement.dataset.painted === '1'", timeout=60_000
            )
            page.wait_for_selector('#link[data-state="live"]', timeout=60_000)
            result["first_paint_ms"] = page.evaluate(
                "performance.getEntriesByName('board-painted')[0].startTime"
            )
            result["live_ms"] = page.evaluate("performance.now()")
            result["load_bytes"] = transferred[0]
            result["snapshot_bytes_raw"] = page.evaluate(
                """performance.getEntriesByType('resource')
                   .filter((e) => e.name.includes('/api/snapshot'))
                   .reduce((n, e) => n + e.decodedBodySize, 0)"""
            )
            ids = by_status["online"] + by_status["degraded"]
            result.update(flood_and_inputs(context, page, ids, flood_seconds, rate))
            # Back to the unfiltered view (a screenful of tiles) for the memory figures.
            page.goto(server.url)
            page.wait_for_selector('#link[data-state="live"]', timeout=60_000)
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            result.update(
                dom_nodes=int(metrics.get("Nodes", 0)),
                js_heap_mb=metrics.get("JSHeapUsedSize", 0) / 2**20,
                renderer_rss_mb=renderer_rss_mb(),
                mounted_tiles=page.evaluate("document.querySelectorAll('.tile').length"),
            )
            browser.close()
    finally:
        server.stop()
    result["load_end"] = os.getloadavg()[0]
    return result


def screenshot(size: int, path: Path) -> None:
    """docs/board.png: the board on a seeded fleet, a few changes in its event list."""
    with fresh_database(BENCH_DB):
        get_redis().flushdb()
        take_screenshot(seed_mixed_fleet(size), path)


def take_screenshot(by_status: dict[str, list[str]], path: Path) -> None:
    server = BoardServer("127.0.0.1", 0, get_engine(), get_redis())
    server.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(server.url)
            page.wait_for_selector('#link[data-state="live"]', timeout=60_000)
            flood = Flood(by_status["online"], rate=10)
            flood.start()
            time.sleep(2.5)
            flood.stop.set()
            flood.join(timeout=10)
            page.wait_for_timeout(500)
            box = page.locator("#map").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
            page.wait_for_selector("#map-tip:not([hidden])")
            page.screenshot(path=str(path))
            browser.close()
    finally:
        server.stop()


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs; the p95's range kept beside it."""
    combined: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    p95s = [r["input_p95_ms"] for r in runs]
    combined["input_p95_range"] = (min(p95s), max(p95s))
    loads = [r[key] for r in runs for key in ("load_start", "load_end")]
    combined["load_range"] = (min(loads), max(loads))
    return combined


def report(results: list[dict[str, Any]], rate: float, flood_seconds: float, repeat: int) -> str:
    sizes = ",".join(str(int(r["fleet"])) for r in results)
    low = min(r["load_range"][0] for r in results)
    high = max(r["load_range"][1] for r in results)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine "
        f"(2 cores shared with other work; figures are noisy), by `.venv/bin/python "
        f"bench/board.py --fleet {sizes} --flood {flood_seconds:g} --rate {rate:g} "
        f"--repeat {repeat}`: the median of {repeat} run(s) per size (in brackets, the "
        f"input p95's range across runs). Flood: {rate:g} status changes/s for "
        f"{flood_seconds:g} s while searching, filtering and scrolling. Machine load "
        f"(1-minute load average, at the start and end of each run): {low:.1f} to {high:.1f}.",
        "",
        "| fleet | first paint | live | bytes (wire) | snapshot raw | input p50 / p95 / max "
        "| long tasks (longest) | main thread in flood: busy (script, style+layout) "
        "| DOM nodes | tiles in DOM | JS heap | renderer RSS "
        "| server: first page / whole snapshot |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['fleet']:,.0f} | {r['first_paint_ms']:.0f} ms | {r['live_ms']:.0f} ms "
            f"| {r['load_bytes'] / 1024:.0f} KiB | {r['snapshot_bytes_raw'] / 1024:.0f} KiB "
            f"| {r['input_p50_ms']:.0f} / {r['input_p95_ms']:.0f} "
            f"({r['input_p95_range'][0]:.0f} to {r['input_p95_range'][1]:.0f}) "
            f"/ {r['input_max_ms']:.0f} ms "
            f"| {r['long_tasks']:.0f} ({r['longest_task_ms']:.0f} ms) "
            f"| {r['main_busy_ms_per_s']:.0f} ms/s ({r['main_script_ms_per_s']:.0f}, "
            f"{r['main_render_ms_per_s']:.0f}) | {r['dom_nodes']:,.0f} "
            f"| {r['mounted_tiles']:.0f} | {r['js_heap_mb']:.1f} MiB | {r['renderer_rss_mb']:.0f} MiB "
            f"| {r['first_page_server_ms']:.0f} / {r['whole_snapshot_server_ms']:.0f} ms |"
        )
    lines.append("")
    lines.append(
        "Flood delivered: "
        + ", ".join(
            f"{r['fleet']:,.0f}: {r['flood_rate']:.0f}/s ({r['inputs']:.0f} inputs)"
            for r in results
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default="5000", help="fleet sizes, comma-separated")
    parser.add_argument("--flood", type=float, default=20.0, help="seconds of flood")
    parser.add_argument("--rate", type=float, default=100.0, help="status changes per second")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; medians reported")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--screenshot", type=Path, help="only take the screenshot, to this path")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(int(args.fleet.split(",")[0]), args.screenshot)
        return
    results = []
    repeat = max(1, args.repeat)
    for size in (int(s) for s in args.fleet.split(",")):
        runs = []
        for _ in range(repeat):
            result = measure(size, args.flood, args.rate)
            print(
                " ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result.items()
                )
            )
            runs.append(result)
        results.append(combine(runs))
    section = report(results, args.rate, args.flood, repeat)
    print(section)
    if not args.no_write:
        write_section(PERFORMANCE_MD, "bench/board.py", section)
    med = statistics.median(r["input_p95_ms"] for r in results)
    print(f"median input p95 across sizes: {med:.0f} ms")


if __name__ == "__main__":
    main()
