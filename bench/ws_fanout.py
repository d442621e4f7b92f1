"""WebSocket fan-out benchmark: prints its figures and writes them into docs/PERFORMANCE.md.

One canvas and 1,000 agent connections on `/ws` of a real gateway
(`molecule-registry gateway`, defaults) while 100 status changes a second are recorded
by the registry's own heartbeat path: batches of heartbeats applied by
`registry.ingestion.heartbeats.apply_heartbeats` in a unit of work, as a heartbeat
worker applies them, each heartbeat degrading a workspace (error rate 1.0) or letting
it recover (0.0), so every change is a WORKSPACE_DEGRADED or WORKSPACE_ONLINE event
recorded in PostgreSQL and published through the outbox to the Redis stream. The
fleet is `--teams` roots with the agents spread under them: an agent may see
(CONTRACT §9) itself, its siblings and its root, so each event is for the canvas and
one team's agents.

The connections live in a second process (asyncio, the `websockets` client), so the
driver never delays a frame's receipt. Afterwards each connection's recorded frames
(those with an `event_id`) are compared with what it may see: every frame to every
allowed connection, none to another, none twice. Lag = the time a connection received
the frame minus the event's recorded time (`created_at`, PostgreSQL's clock on this
same machine). CPU per role from /proc says what bounds it.

Run: `.venv/bin/python bench/ws_fanout.py [--agents 1000] [--teams 50] [--rate 100]
[--seconds 60] [--no-write]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.common import free_port, wait_for_port  # noqa: E402

HEADING = "## Gateway WebSocket fan-out — `bench/ws_fanout.py`"
MARKER = "bench/ws_fanout.py"
OPEN_CONCURRENCY = 50  # handshakes in flight at once (each agent's is a token check)


# --------------------------------------------------------------------------- clients
# This part runs in its own process (`--role clients`) and imports nothing of the
# registry: it only connects, receives and notes the time.


BROADCAST_FRAMES = [0]  # frames without an event id (heartbeats, throttled), all connections


async def _follow(url: str, headers: dict[str, str], got: list[Any], gate: asyncio.Semaphore):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with gate:
        ws = await connect(url, additional_headers=headers, open_timeout=300, max_queue=None)
    got.append(["open", time.time()])
    try:
        async for message in ws:
            now = time.time()
            frame = json.loads(message)
            event_id = frame.get("event_id")
            if event_id is not None:  # a recorded event (broadcast-only ones carry none)
                # The stream id in the position starts with when Redis took the entry.
                published = int(frame["position"].split("-", 1)[0]) / 1000
                got.append([event_id, now, published])
            else:
                BROADCAST_FRAMES[0] += 1
    except ConnectionClosed as exc:
        got.append(["closed", repr(exc)])
    finally:
        await ws.close()


async def _clients(spec: dict[str, Any]) -> None:
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    received: dict[str, list[Any]] = {"canvas": []}
    tasks = [asyncio.create_task(_follow(spec["url"], {}, received["canvas"], gate))]
    for ws, token in spec["agents"].items():
        received[ws] = []
        headers = {"X-Workspace-ID": ws, "Authorization": f"Bearer {token}"}
        tasks.append(asyncio.create_task(_follow(spec["url"], headers, received[ws], gate)))
    while not all(got for got in received.values()):
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.sleep(0.1)
    print("OPEN", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    received["broadcast_frames"] = BROADCAST_FRAMES  # type: ignore[assignment]
    Path(spec["out"]).write_text(json.dumps(received))
    print("DONE", flush=True)


def clients_role(spec_path: str) -> None:
    asyncio.run(_clients(json.loads(Path(spec_path).read_text())))


# --------------------------------------------------------------------------- driver


@contextmanager
def private_redis() -> Iterator[tuple[str, int]]:
    """A Redis server of this run's own (URL, pid): pub/sub channels span a whole server,
    so on a shared one every other run's broadcast events would reach this gateway."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--databases", "2"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def seed(teams: int, agents: int) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """`teams` roots and `agents` children spread under them, all online:
    (every id, each child's root, each child's token)."""
    from sqlalchemy import text

    from registry.db import get_engine
    from registry.ingestion.tokens import issue_token

    roots = [str(uuid.uuid4()) for _ in range(teams)]
    children = [str(uuid.uuid4()) for _ in range(agents)]
    parent = {c: roots[i % teams] for i, c in enumerate(children)}
    rows = [{"id": r, "name": f"team-{i}", "parent": None} for i, r in enumerate(roots)]
    rows += [{"id": c, "name": f"agent-{i}", "parent": parent[c]} for i, c in enumerate(children)]
    tokens: dict[str, str] = {}
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, runtime, parent_id, registered_at, "
                "last_heartbeat_at) VALUES (:id, :name, 'online', 'langgraph', :parent, now(), "
                "now())"
            ),
            rows,
        )
        for child in children:
            tokens[child] = issue_token(conn, uuid.UUID(child), None)
    return roots + children, parent, tokens


def may_see(agent: str, workspace: str, parent: dict[str, str]) -> bool:
    """CONTRACT §9 for this fleet's shape: itself, its siblings, its root."""
    return workspace in (agent, parent[agent]) or parent.get(workspace) == parent[agent]


class Driver:
    """Status changes at `rate` per second through the registry's heartbeat path."""

    def __init__(self, ids: list[str], tokens: dict[str, str], rate: float, batch: int) -> None:
        self.ids, self.tokens, self.rate, self.batch = ids, tokens, rate, batch
        self.degraded: set[str] = set()
        self.events: list[tuple[int, str, float]] = []  # event id, workspace, recorded at
        self.late_ms: list[float] = []  # how late each batch started after its slot
        self.rng = random.Random(7)

    def apply(self) -> None:
        from registry.ingestion.heartbeats import apply_heartbeats
        from registry.ingestion.payloads import HeartbeatPayload
        from registry.uow import unit_of_work

        chosen = self.rng.sample(self.ids, self.batch)
        payloads = []
        for ws in sorted(chosen):  # the heartbeat worker's order: by id
            failing = ws not in self.degraded
            payloads.append(
                HeartbeatPayload(
                    workspace_id=uuid.UUID(ws),
                    auth_token=self.tokens.get(ws),
                    error_rate=1.0 if failing else 0.0,
                    sample_error="bench: failing" if failing else None,
                    uptime_seconds=60,
                )
            )
        with unit_of_work() as uow:
            results = apply_heartbeats(uow, payloads)
        for ws, result in zip(sorted(chosen), results, strict=True):
            if result.get("workspace_status") == "degraded":
                self.degraded.add(ws)
            else:
                self.degraded.discard(ws)
        for event in uow.recorded_events:
            assert event.event_id is not None and event.timestamp is not None
            self.events.append(
                (event.event_id, str(event.workspace_id), event.timestamp.timestamp())
            )

    def run(self, seconds: float) -> float:
        """Apply batches on schedule for `seconds`; the achieved changes per second."""
        every = self.batch / self.rate
        count = int(seconds / every)
        start = time.monotonic()
        for i in range(count):
            due = start + i * every
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.late_ms.append(max(0.0, time.monotonic() - due) * 1000)
            self.apply()
        return len(self.events) / (time.monotonic() - start)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def check(
    received: dict[str, list[Any]], events: list[tuple[int, str, float]], parent: dict[str, str]
) -> dict[str, Any]:
    """Each connection's frames against what it may see; lags of the expected ones."""
    recorded_at = {event_id: at for event_id, _ws, at in events}
    workspace_of = {event_id: ws for event_id, ws, _at in events}
    missing = extra = duplicate = closed = 0
    lags: list[float] = []
    fanout_lags: list[float] = []  # from the stream entry on: the gateway's part
    for who, got in received.items():
        if any(item[0] == "closed" for item in got):
            closed += 1
        frames = [(item[0], item[1], item[2]) for item in got if isinstance(item[0], int)]
        seen = [event_id for event_id, _t, _p in frames if event_id in recorded_at]
        duplicate += len(seen) - len(set(seen))
        expected = {
            event_id
            for event_id, ws in workspace_of.items()
            if who == "canvas" or may_see(who, ws, parent)
        }
        missing += len(expected - set(seen))
        extra += len(set(seen) - expected)
        lags.extend((t - recorded_at[e]) * 1000 for e, t, _p in frames if e in expected)
        fanout_lags.extend((t - p) * 1000 for e, t, p in frames if e in expected)
    return {
        "missing": missing,
        "extra": extra,
        "duplicate": duplicate,
        "closed": closed,
        "frames": len(lags),
        "lags": lags,
        "fanout_lags": fanout_lags,
    }


def run(args: argparse.Namespace, env: dict[str, str], db_name: str, redis: int) -> dict[str, Any]:
    from gateway_helpers import gateway_argv
    from workerproc import managed_process, process_env

    from bench import procstats

    log_dir = Path(tempfile.mkdtemp(prefix="wsbench-"))
    ids, parent, tokens = seed(args.teams, args.agents)
    driver = Driver(ids, tokens, args.rate, args.batch)
    with ExitStack() as stack:
        port = free_port()
        gw_env = process_env(env, RATE_LIMIT=str(10**9))
        gateway = stack.enter_context(
            managed_process(gateway_argv(port, "warning"), env=gw_env, log_dir=log_dir, name="gw")
        )
        wait_for_port(port)
        spec = log_dir / "spec.json"
        out = log_dir / "received.json"
        spec.write_text(
            json.dumps({"url": f"ws://127.0.0.1:{port}/ws", "agents": tokens, "out": str(out)})
        )
        clients = subprocess.Popen(
            [sys.executable, __file__, "--role", "clients", "--spec", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(clients.kill)
        opened = time.monotonic()
        assert clients.stdout is not None and clients.stdin is not None
        line = clients.stdout.readline().strip()
        if line != "OPEN":
            raise RuntimeError(f"the client process failed ({line!r}); see its stderr")
        open_seconds = time.monotonic() - opened
        driver.apply()  # warm: the driver's connections and the gateway's first frame
        driver.events.clear()
        time.sleep(1.0)
        before = procstats.snapshot({gateway.proc.pid})
        achieved = driver.run(args.seconds)
        time.sleep(args.settle)  # the last frames' way to every connection
        after = procstats.snapshot({gateway.proc.pid})
        shares = _shares(
            procstats,
            before,
            after,
            gateway=gateway.proc.pid,
            own={"clients": clients.pid, "redis": redis},
            db=db_name,
        )
        clients.stdin.write("stop\n")
        clients.stdin.flush()
        if clients.stdout.readline().strip() != "DONE":
            raise RuntimeError("the client process did not finish")
        clients.wait(timeout=60)
        received = json.loads(out.read_text())
        broadcast_frames = received.pop("broadcast_frames")[0]
    result = check(received, driver.events, parent)
    result.update(
        achieved=achieved,
        events=len(driver.events),
        open_seconds=open_seconds,
        shares=shares,
        driver_late_p99=percentile(driver.late_ms, 0.99),
        broadcast_frames=broadcast_frames,
    )
    return result


def _shares(
    procstats: Any, before: Any, after: Any, *, gateway: int, own: dict[str, int], db: str
) -> dict[str, float]:
    """procstats' roles with the gateway (its process group) and this run's own processes
    (`own`: role -> pid) named; the rest of their kind on the box counts as other."""
    shares = procstats.cpu_shares(before, after, {gateway}, db)
    shares["gateway"] = shares.pop("worker", 0.0)
    shares["gateway_wait"] = shares.pop("worker_wait", float("nan"))
    wall = (after.machine_total - before.machine_total) / procstats.CORES
    everyone = sum(v for k, v in shares.items() if k in ("redis", "other"))
    for role, pid in own.items():
        used = after.ticks.get(pid, ("", 0, 0))[2] - before.ticks.get(pid, ("", 0, 0))[2]
        shares[role] = used / wall if wall > 0 else 0.0
    shares["other"] = max(0.0, everyone - shares["clients"] - shares["redis"])
    return shares


def format_roles(shares: dict[str, float]) -> str:
    order = ["gateway", "clients", "bench", "postgres", "redis", "other", "machine"]
    names = {"bench": "driver"}
    text = "cores used of 2: " + ", ".join(
        f"{names.get(role, role)} {shares.get(role, 0.0):.2f}" for role in order
    )
    text += f"; gateway runnable but waiting for a CPU {shares['gateway_wait']:.0%}"
    if "psi_some" in shares:
        text += f"; some task waiting for a CPU {min(shares['psi_some'], 1.0):.0%} of the time"
    return text


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lags, fan = r["lags"], r["fanout_lags"]
    frames_per_s = (r["frames"] + r["broadcast_frames"]) / args.seconds
    per_frame = r["shares"]["gateway"] / frames_per_s * 1e6 if frames_per_s else float("nan")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Measured {stamp} on this machine (2 cores shared with other work; 1-minute "
            f"load average {os.getloadavg()[0]:.1f} at the end), by `.venv/bin/python "
            f"bench/ws_fanout.py --agents {args.agents} --teams {args.teams} --rate "
            f"{args.rate:g} --seconds {args.seconds:g}`: one gateway (`molecule-registry "
            f"gateway`, defaults), 1 canvas and {args.agents:,} agent connections (each "
            f"agent sees its team of {args.agents // args.teams} and its root), "
            f"{args.rate:g} status changes a second recorded by the registry's heartbeat "
            f"path in batches of {args.batch}, for {args.seconds:g} s; connections in a "
            "process of their own, all on this box.",
            "",
            "| figure | value | target |",
            "|---|---|---|",
            f"| status changes recorded | {r['events']:,} ({r['achieved']:.0f}/s) | 100/s |",
            f"| frames expected and received (recorded events) | {r['frames']:,} | |",
            f"| frames missing / to a connection that may not see them / twice | "
            f"{r['missing']} / {r['extra']} / {r['duplicate']} | 0 / 0 / 0 |",
            f"| connections closed during the run | {r['closed']} | 0 |",
            f"| lag p50 (received minus recorded) | {percentile(lags, 0.5):.0f} ms | |",
            f"| lag p90 | {percentile(lags, 0.9):.0f} ms | |",
            f"| lag p99 | {percentile(lags, 0.99):.0f} ms | ≤ 250 ms |",
            f"| lag max | {max(lags, default=float('nan')):.0f} ms | |",
            f"| of which from the stream entry to the receipt (the gateway's part): "
            f"p50 / p99 | {percentile(fan, 0.5):.0f} / {percentile(fan, 0.99):.0f} ms | |",
            f"| {args.agents + 1:,} connections opened in | {r['open_seconds']:.1f} s | |",
            f"| broadcast-only frames received too (heartbeats, ≤ 1/s per workspace) | "
            f"{r['broadcast_frames']:,} | |",
            f"| gateway CPU per frame sent (all frames) | {per_frame:.0f} µs | |",
            "",
            "CPU during the run (1.00 = one core; `other` is everything else on the box): "
            + format_roles(r["shares"])
            + ".",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0, help="status changes a second")
    parser.add_argument("--batch", type=int, default=10, help="heartbeats per transaction")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds for the last frames")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--role", choices=("driver", "clients"), default="driver")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "clients":
        clients_role(args.spec)
        return

    from bench.common import (
        PERFORMANCE_MD,
        fresh_database,
        service_env,
        unique_database_name,
        write_section,
    )

    db_name = unique_database_name("molecule_registry_wsbench")
    with private_redis() as (redis_url, redis_pid):
        env = service_env(
            db_name,
            f"{redis_url}/0",
            f"{redis_url}/1",
            METRICS_PORT="0",
            MOLECULE_DEPLOY_MODE="",
            MOLECULE_ORG_ID="",
        )
        os.environ.update(env)
        with fresh_database(db_name):
            result = run(args, env, db_name, redis_pid)
    section = report(args, result)
    print(section)
    if not args.no_write:
        write_section(PERFORMANCE_MD, MARKER, section, heading=HEADING)
        print("\nwritten into docs/PERFORMANCE.md")


if __name__ == "__main__":
    main()
