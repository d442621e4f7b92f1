"""Gateway benchmark: prints its figures and writes them into docs/PERFORMANCE.md.

1. The gateway's own cost: authenticated HTTP heartbeats per second through a real
   gateway (`molecule-registry gateway`), the broker absorbing them (no worker),
   against a hello-world Starlette endpoint on the same uvicorn (httptools, uvloop):
   the same wrk (`-t1 -c<C>`, a Lua script posting each fleet member's heartbeat with
   its bearer token), alternated within one run; medians of the rounds, and the server
   CPU per answered request of each (/proc).
2. The latency of a lone heartbeat on the idle gateway (one caller, one at a time).
3. End to end at full rate: wrk (closed loop, as 1.) against the gateway with the
   heartbeat worker of docs/OPERATIONS.md consuming (prefork -c 2, prefetch
   multiplier 200), each call a different workspace of a large fleet; heartbeats
   answered, then the time until PostgreSQL holds all of them
   (`workspaces.last_heartbeat_at`, the applying transaction's start); CPU per role
   from /proc.
4. At a steady rate (3,333/s, open loop, bench/gateway_load.py): answer latency
   (p50, p99, from the time each call was due) and, per heartbeat, the time from its
   answer to its row's `last_heartbeat_at`.
5. The gateway's resident memory every 10 s over `--memory-seconds` at full rate
   (wrk, worker consuming).
6. Registration latency (p50, p99) at 5/s and 50/s through the gateway and a real
   worker subprocess (new workspaces, poll mode).

Everything runs against its own PostgreSQL database, its own RabbitMQ vhost and its
own redis-server (a private port: Redis pub/sub channels are global to a server, and
the shared one carries other runs' events, which every gateway's WebSocket reader
would take in), dropped after. `RATE_LIMIT` is raised for the run: one token's 600
calls a minute would otherwise end phase 1.

Run: `.venv/bin/python bench/gateway.py [--connections 64] [--seconds 5] [--rounds 5]
[--e2e-seconds 15] [--rate 3333] [--paced-seconds 20] [--memory-seconds 300]
[--skip PHASE ...] [--no-write]` (needs wrk and redis-server: `apt-get install wrk
redis-server`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench import procstats  # noqa: E402
from bench.common import (  # noqa: E402
    PERFORMANCE_MD,
    free_port,
    fresh_database,
    seed_fleet,
    service_env,
    unique_database_name,
    wait_for_port,
    write_section,
)
from bench.gateway_load import run_open_loop  # noqa: E402

DB_NAME = unique_database_name("molecule_registry_gwbench")
GATEWAY_HEADING = "## Gateway — `bench/gateway.py`"  # above the section when first written
LOG_DIR = Path(tempfile.mkdtemp(prefix="gwbench-"))
REGISTER_RATE = 50.0
LOW_REGISTER_RATE = 5.0  # the gateway's own share of a registration's latency
OWN_FLEET = 1000  # phase 1: each call the next of these, the token cache warm
RSS_EVERY_SECONDS = 10
WARM_UP_SECONDS = 60
APPLY_TIMEOUT_SECONDS = 60  # no progress for this long: the rest is reported missing
# The heartbeat worker as docs/OPERATIONS.md runs it.
HEARTBEAT_WORKER = ["--prefetch-multiplier", "200"]
PHASES = ("own", "lone", "e2e", "paced", "memory", "register")


def lua_script(fleet: list[tuple[str, str]], name: str) -> Path:
    """wrk's script: each request is the next fleet member's heartbeat with its bearer.
    The fleet is read from a file at start (a Lua table literal of 100,000 members would
    pass LuaJIT's constants limit)."""
    members = LOG_DIR / f"{name}.txt"
    members.write_text("".join(f"{ws} {token}\n" for ws, token in fleet))
    path = LOG_DIR / f"{name}.lua"
    path.write_text(
        f"""
local ids, tokens = {{}}, {{}}
for line in io.lines("{members}") do
  local id, token = line:match("^(%S+) (%S+)$")
  ids[#ids + 1] = id
  tokens[#tokens + 1] = token
end
local n = #ids
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("POST", "/registry/heartbeat",
    {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. tokens[i]}},
    '{{"workspace_id":"' .. ids[i] .. '","active_tasks":1,"uptime_seconds":60}}')
end
"""
    )
    return path


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, every thread included (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run: requests/s, requests answered, non-2xx answers, latency p50/p99."""
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    found = lambda pattern: re.search(pattern, out, re.MULTILINE)  # noqa: E731
    bad = found(r"Non-2xx or 3xx responses:\s+(\d+)")
    errors = found(r"Socket errors:.*")
    return {
        "rate": float(found(r"Requests/sec:\s+([\d.]+)").group(1)),  # type: ignore[union-attr]
        "requests": int(found(r"(\d+) requests in").group(1)),  # type: ignore[union-attr]
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
        "p50": (m.group(1) if (m := found(r"^\s*50%\s+(\S+)")) else "?"),
        "p99": (m.group(1) if (m := found(r"^\s*99%\s+(\S+)")) else "?"),
    }


def measured(
    url: str, script: Path, connections: int, seconds: int, pid: int
) -> tuple[dict[str, Any], float]:
    """wrk's figures plus the server process's CPU microseconds per answered request:
    what a request costs the server whatever else the machine is doing."""
    before = cpu_seconds(pid)
    figures = wrk(url, script, connections, seconds)
    used = cpu_seconds(pid) - before
    return figures, used / max(1, figures["requests"]) * 1e6


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --------------------------------------------------------------------------- CPU per role


class Roles:
    """CPU per process role over a phase, from /proc: our process groups by name
    (gateway, worker, …; the benchmark's own group is the load generator: wrk runs in
    it), PostgreSQL (its server processes and this run's backends), RabbitMQ, and
    everything else on the box."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = {pgid: name for name, pgid in groups.items()}
        self.groups[os.getpgid(0)] = "load generator"
        self._before: procstats.Snapshot | None = None

    def start(self) -> None:
        self._before = procstats.snapshot(set(self.groups))

    def stop(self) -> dict[str, float]:
        """Per role, the share of ONE core used since start() (2.0 = two cores busy)."""
        before, after = self._before, procstats.snapshot(set(self.groups))
        assert before is not None
        wall = (after.machine_total - before.machine_total) / procstats.CORES
        used: dict[str, float] = {}
        for pid, (comm, pgid, ticks) in after.ticks.items():
            previous = before.ticks.get(pid)
            if previous is not None and before.started.get(pid) == after.started.get(pid):
                delta = ticks - previous[2]
            elif after.started.get(pid, 0) >= before.uptime_ticks - procstats.CLOCK_TICKS:
                delta = ticks  # started during the phase
            else:
                continue
            role = self.groups.get(pgid) or procstats._role(pid, comm, DB_NAME)
            used[role] = used.get(role, 0.0) + max(0, delta)
        shares = {role: ticks / wall for role, ticks in used.items()} if wall > 0 else {}
        shares["machine"] = (after.machine_busy - before.machine_busy) / max(wall, 1)
        for pgid, name in self.groups.items():
            # How much of the role's runnable time went waiting for a free core.
            waiting = procstats._waiting_share(before, after, lambda _p, g, pgid=pgid: g == pgid)
            if waiting is not None:
                shares[f"{name} waiting"] = waiting
        return shares


def format_roles(shares: dict[str, float]) -> str:
    order = ["gateway", "worker", "load generator", "postgres", "rabbitmq", "redis (ours)"]
    parts = [f"{role} {shares.get(role, 0.0):.2f}" for role in order]
    rest = sum(
        v for k, v in shares.items() if k not in (*order, "machine") and not k.endswith("waiting")
    )
    waits = [
        f"{role} {shares[f'{role} waiting']:.0%}"
        for role in ("gateway", "worker")
        if f"{role} waiting" in shares
    ]
    return (
        f"cores used of {procstats.CORES}: "
        + ", ".join(parts)
        + f", everything else {rest:.2f}; machine {shares.get('machine', 0.0):.2f}"
        + (f"; runnable but waiting for a core: {', '.join(waits)}" if waits else "")
    )


# --------------------------------------------------------------------------- database


def applied_at(workspace_ids: list[str], since: float) -> dict[str, float]:
    """Workspace id -> when its heartbeat was applied (epoch seconds of the applying
    transaction's start), for the rows applied after `since`."""
    from sqlalchemy import text

    from registry.db import get_engine

    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id::text, extract(epoch FROM last_heartbeat_at) FROM workspaces "
                "WHERE id = ANY(CAST(:ids AS uuid[])) AND last_heartbeat_at > to_timestamp(:since)"
            ),
            {"ids": workspace_ids, "since": since},
        )
        return {ws: float(at) for ws, at in rows}


def wait_until_applied(workspace_ids: list[str], since: float, expected: int) -> dict[str, float]:
    """Poll until `expected` of the rows were applied after `since` (or no progress for
    APPLY_TIMEOUT_SECONDS); the applied times."""
    seen, last_change = -1, time.monotonic()
    while True:
        applied = applied_at(workspace_ids, since)
        if len(applied) >= expected:
            return applied
        if len(applied) != seen:
            seen, last_change = len(applied), time.monotonic()
        elif time.monotonic() - last_change > APPLY_TIMEOUT_SECONDS:
            return applied
        time.sleep(0.5)


# --------------------------------------------------------------------------- phases


def own_cost(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 1: gateway and hello-world alternated under the same wrk; medians."""
    script, gw, hello = ctx["own_script"], ctx["gateway"], ctx["hello"]
    warm = wrk(gw["url"], script, args.connections, 2)["requests"]  # warm: token cache
    wrk(hello["url"], script, args.connections, 2)
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        h, h_cpu = measured(hello["url"], script, args.connections, args.seconds, hello["pid"])
        g, g_cpu = measured(gw["url"], script, args.connections, args.seconds, gw["pid"])
        rounds.append({"hello": h, "gateway": g, "hello_cpu": h_cpu, "gateway_cpu": g_cpu})
        print(
            f"  round: hello {h['rate']:,.0f}/s ({h_cpu:.0f} µs), gateway {g['rate']:,.0f}/s "
            f"({g_cpu:.0f} µs) = {g['rate'] / h['rate']:.0%}",
            flush=True,
        )
    med = lambda key: statistics.median(key(r) for r in rounds)  # noqa: E731
    return {
        "heartbeats": sum(r["gateway"]["requests"] for r in rounds) + warm,
        "hello": med(lambda r: r["hello"]["rate"]),
        "gateway": med(lambda r: r["gateway"]["rate"]),
        "share": med(lambda r: r["gateway"]["rate"] / r["hello"]["rate"]),
        "hello_cpu": med(lambda r: r["hello_cpu"]),
        "gateway_cpu": med(lambda r: r["gateway_cpu"]),
        "rounds": rounds,
        "non2xx": sum(r["gateway"]["non2xx"] for r in rounds),
    }


def lone(ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 2: one caller, one heartbeat at a time, the gateway idle between them."""
    import httpx

    ws, token = ctx["own_fleet"][0]
    took = []
    with httpx.Client(base_url=ctx["gateway"]["url"], timeout=10) as http:
        for _ in range(50):
            started = time.perf_counter()
            answer = http.post(
                "/registry/heartbeat",
                json={"workspace_id": ws, "uptime_seconds": 1},
                headers={"Authorization": f"Bearer {token}"},
            )
            took.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
            time.sleep(0.05)
    return {"median_ms": statistics.median(took)}


def end_to_end(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 3: full rate, each call a new workspace; answered, then all applied."""
    fleet = ctx["e2e_fleet"]
    ids = [ws for ws, _ in fleet]
    script = lua_script(fleet, "e2e")
    roles = Roles(ctx["groups"])
    roles.start()
    since = time.time()
    figures = wrk(ctx["gateway"]["url"], script, args.e2e_connections, args.e2e_seconds)
    answered_at = time.time()
    answered = figures["requests"] - figures["non2xx"]
    wrapped = figures["requests"] > len(fleet)
    expected = min(answered, len(fleet))
    applied = wait_until_applied(ids, since, expected)
    shares = roles.stop()
    last = max(applied.values()) if applied else since
    return {
        "answered": answered,
        "answer_rate": figures["rate"],
        "non2xx": figures["non2xx"],
        "socket_errors": figures["socket_errors"],
        "p50": figures["p50"],
        "p99": figures["p99"],
        "applied": len(applied),
        "expected": expected,
        "wrapped": wrapped,
        "applied_rate": len(applied) / max(1e-9, last - since),
        "drain_s": max(0.0, last - answered_at),
        "cpu": shares,
    }


def paced(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 4: open loop at `--rate`; answer latency and answer-to-applied lag."""
    count = int(args.rate * args.paced_seconds)
    fleet = ctx["paced_fleet"][:count]
    ids = [ws for ws, _ in fleet]
    roles = Roles(ctx["groups"])
    roles.start()
    since = time.time()
    answers = run_open_loop(
        "127.0.0.1", ctx["gateway"]["port"], fleet, args.rate, args.paced_connections
    )
    took = time.time() - since
    ok = {ws: a for ws, a in answers.items() if a.status == 200}
    applied = wait_until_applied(ids, since, len(ok))
    shares = roles.stop()
    latencies = [(a.answered - a.due) * 1000 for a in answers.values()]
    lags = [applied[ws] - a.answered for ws, a in ok.items() if ws in applied]
    return {
        "offered": count,
        "seconds": took,
        "answered": len(answers),
        "ok": len(ok),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "applied": len(applied),
        "lag_p50": percentile(lags, 0.5) if lags else float("nan"),
        "lag_p99": percentile(lags, 0.99) if lags else float("nan"),
        "lag_max": max(lags) if lags else float("nan"),
        "late": sum(1 for lag in lags if lag > 2.0),
        "missing": len(ok) - len(lags),
        "cpu": shares,
    }


def memory(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 5: the gateway's RSS every RSS_EVERY_SECONDS under wrk at full rate."""
    script = lua_script(ctx["e2e_fleet"], "memory")
    pid = ctx["gateway"]["pid"]
    out = LOG_DIR / "memory-wrk.txt"
    argv = [
        "wrk",
        "-t1",
        f"-c{args.e2e_connections}",
        f"-d{args.memory_seconds}s",
        "-s",
        str(script),
    ]
    samples: list[tuple[float, float]] = []
    with out.open("w") as sink:
        load = subprocess.Popen(
            [*argv, ctx["gateway"]["url"]], stdout=sink, stderr=subprocess.STDOUT
        )
        started = time.monotonic()
        try:
            while load.poll() is None:
                samples.append((time.monotonic() - started, rss_mib(pid)))
                time.sleep(RSS_EVERY_SECONDS)
        finally:
            if load.poll() is None:
                load.kill()
            load.wait()
    text = out.read_text()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    steady = [mib for at, mib in samples if at >= WARM_UP_SECONDS] or [mib for _, mib in samples]
    middle = statistics.median(steady)
    return {
        "samples": samples,
        "rate": float(rate.group(1)) if rate else float("nan"),
        "median": middle,
        "low": (min(steady) - middle) / middle,
        "high": (max(steady) - middle) / middle,
    }


async def _registrations(base: str, seconds: float, rate: float) -> tuple[list[float], int]:
    """Registrations of new workspaces at `rate` per second; (latencies ms, failures)."""
    import httpx

    latencies: list[float] = []
    failures = 0

    async def one(http: httpx.AsyncClient) -> None:
        nonlocal failures
        started = time.perf_counter()
        answer = await http.post(
            "/registry/register",
            json={"id": str(uuid.uuid4()), "agent_card": {"name": "b"}, "delivery_mode": "poll"},
        )
        if answer.status_code == 200 and answer.json().get("auth_token"):
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            failures += 1

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        await one(http)  # warm: connections, the worker's first task
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        for i in range(int(seconds * rate)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http)))
        await asyncio.gather(*tasks)
    return latencies, failures


def registrations(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 6: registration latency with the registry queue's worker (prefork -c 2)."""
    from workerproc import WORKER_READY, celery_worker_argv, managed_process

    figures: dict[str, Any] = {}
    with managed_process(
        celery_worker_argv(["registry"], concurrency=2),
        env=ctx["env"],
        log_dir=LOG_DIR,
        ready=WORKER_READY,
        timeout=60,
        name="register-worker",
    ):
        for rate in (LOW_REGISTER_RATE, REGISTER_RATE):
            started = time.perf_counter()
            latencies, failures = asyncio.run(
                _registrations(ctx["gateway"]["url"], args.register_seconds, rate)
            )
            took = time.perf_counter() - started
            figures[f"{rate:g}"] = {
                "count": len(latencies),
                "failures": failures,
                "p50": percentile(latencies, 0.5) if latencies else float("nan"),
                "p99": percentile(latencies, 0.99) if latencies else float("nan"),
                "completed_per_s": len(latencies) / took,
            }
    return figures


# --------------------------------------------------------------------------- the run


def purge(broker: str) -> int:
    """Empty the heartbeat queue; the number of messages it held."""
    from kombu import Connection

    from molecule_registry_client.names import HEARTBEAT_BATCH_TASK, queue_for

    with Connection(broker) as conn:
        try:
            return int(conn.default_channel.queue_purge(queue_for(HEARTBEAT_BATCH_TASK)) or 0)
        except conn.channel_errors:  # no such queue yet: nothing was published
            return 0


def with_worker(args: argparse.Namespace, ctx: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    """Phases 3 to 5, with the heartbeat worker of docs/OPERATIONS.md consuming."""
    from workerproc import WORKER_READY, celery_worker_argv, managed_process

    figures: dict[str, Any] = {}
    with managed_process(
        celery_worker_argv(["registry.heartbeats"], concurrency=2, extra=HEARTBEAT_WORKER),
        env=ctx["env"],
        log_dir=LOG_DIR,
        ready=WORKER_READY,
        timeout=60,
        name="heartbeat-worker",
    ) as worker:
        ctx["groups"]["worker"] = worker.proc.pid
        if "e2e" in wanted:
            print("end to end at full rate …", flush=True)
            figures["e2e"] = end_to_end(args, ctx)
            print(f"  {figures['e2e']}", flush=True)
        if "paced" in wanted:
            print(f"paced at {args.rate:g}/s …", flush=True)
            figures["paced"] = paced(args, ctx)
            print(f"  {figures['paced']}", flush=True)
        if "memory" in wanted:
            print(f"memory over {args.memory_seconds} s …", flush=True)
            figures["memory"] = memory(args, ctx)
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gateway_helpers import gateway_argv
    from workerproc import managed_process, process_env

    figures: dict[str, Any] = {}
    wanted = [phase for phase in PHASES if phase not in args.skip]
    with ExitStack() as stack:
        redis_port = free_port()
        redis = stack.enter_context(
            managed_process(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--databases", "4"],
                env=dict(os.environ), log_dir=LOG_DIR, ready="Ready to accept connections",
                name="redis",
            )
        )  # fmt: skip
        base = f"redis://127.0.0.1:{redis_port}"
        core = service_env(
            DB_NAME, f"{base}/0", f"{base}/1", MOLECULE_DEPLOY_MODE="", MOLECULE_ORG_ID=""
        )
        os.environ.update(core)  # this process's registry modules (seeding, reading rows)
        stack.enter_context(fresh_database(DB_NAME))
        print("seeding the fleets …", flush=True)
        ctx: dict[str, Any] = {
            # Tokens as registered and never used, as the gateway first sees them.
            "own_fleet": list(seed_fleet(OWN_FLEET, token_used=False, analyze=False).items()),
            # Steady-state fleets: tokens in use; each member heartbeats once per phase.
            "e2e_fleet": list(seed_fleet(args.e2e_fleet, analyze=False).items()),
            "paced_fleet": list(seed_fleet(int(args.rate * args.paced_seconds)).items()),
        }
        ctx["own_script"] = lua_script(ctx["own_fleet"], "own")
        broker = core["CELERY_BROKER_URL"]
        if args.broker == "amqp":
            from liveness_helpers import private_rabbitmq_vhost

            broker = stack.enter_context(private_rabbitmq_vhost())
        env = ctx["env"] = process_env(core, CELERY_BROKER_URL=broker, RATE_LIMIT=str(10**9))
        gw_port, hello_port = free_port(), free_port()
        gateway = stack.enter_context(
            managed_process(
                gateway_argv(gw_port, "warning"), env=env, log_dir=LOG_DIR, name="gateway"
            )
        )
        hello_argv = [
            sys.executable, "-m", "uvicorn", "gateway_hello_app:app", "--app-dir", str(ROOT / "bench"),
            "--port", str(hello_port), "--http", "httptools", "--loop", "uvloop",
            "--log-level", "warning", "--no-access-log", "--no-server-header",
        ]  # fmt: skip
        hello = stack.enter_context(
            managed_process(hello_argv, env=env, log_dir=LOG_DIR, name="hello")
        )
        wait_for_port(gw_port)
        wait_for_port(hello_port)
        ctx["gateway"] = {
            "url": f"http://127.0.0.1:{gw_port}",
            "port": gw_port,
            "pid": gateway.proc.pid,
        }
        ctx["hello"] = {"url": f"http://127.0.0.1:{hello_port}", "pid": hello.proc.pid}
        ctx["groups"] = {
            "gateway": gateway.proc.pid, "hello": hello.proc.pid, "redis (ours)": redis.proc.pid
        }  # fmt: skip
        if "lone" in wanted:
            print("lone heartbeat …", flush=True)
            figures["lone"] = lone(ctx)
        if "own" in wanted:
            print("own cost (no worker) …", flush=True)
            purge(broker)  # the lone calls' messages
            figures["own"] = own_cost(args, ctx)
            # What phase 1 left in the broker is not the next phases' work; its count
            # gives the mean batch (the warm-up run included).
            figures["own"]["messages"] = purge(broker)
        if {"e2e", "paced", "memory"} & set(wanted):
            figures.update(with_worker(args, ctx, wanted))
        if "register" in wanted:
            print("registrations …", flush=True)
            figures["register"] = registrations(args, ctx)
    return figures


# --------------------------------------------------------------------------- the report


def command(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python bench/gateway.py",
        f"--broker {args.broker}",
        f"--connections {args.connections}",
        f"--seconds {args.seconds}",
        f"--rounds {args.rounds}",
        f"--e2e-seconds {args.e2e_seconds}",
        f"--rate {args.rate:g}",
        f"--paced-seconds {args.paced_seconds:g}",
        f"--memory-seconds {args.memory_seconds}",
    ]
    if args.skip:
        parts.append("--skip " + " ".join(args.skip))
    return " ".join(parts)


def report(args: argparse.Namespace, f: dict[str, Any]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        f"Measured {stamp} on this machine ({procstats.CORES} cores shared with other work; "
        f"figures are noisy; 1-minute load average {load:.1f} at the end), by "
        f"`{command(args)}`. The gateway, its broker (RabbitMQ vhost of its own, "
        "publisher confirms), its own redis-server, PostgreSQL, the worker and the load "
        "generator all on this box.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    if "own" in f:
        o = f["own"]
        runs = lambda key: ", ".join(f"{r[key]['rate']:,.0f}" for r in o["rounds"])  # noqa: E731
        shares = ", ".join(f"{r['gateway']['rate'] / r['hello']['rate']:.0%}" for r in o["rounds"])
        lines += [
            f"| hello-world Starlette endpoint, same uvicorn, wrk -t1 -c{args.connections} | "
            f"{o['hello']:,.0f} req/s ({runs('hello')}) |",
            f"| gateway: authenticated heartbeats, broker absorbing (no worker), same wrk | "
            f"{o['gateway']:,.0f} req/s ({runs('gateway')}) |",
            f"| **gateway / hello-world, per round (median)** | **{o['share']:.0%}** ({shares}); "
            f"ratio of the medians {o['gateway'] / o['hello']:.0%} |",
            f"| server CPU per answered request (its process, all threads): hello-world / "
            f"gateway | {o['hello_cpu']:.0f} / {o['gateway_cpu']:.0f} µs: on equal CPU the "
            f"gateway answers {o['hello_cpu'] / o['gateway_cpu']:.0%} of hello-world's rate "
            "(the broker's CPU not counted) |",
            f"| gateway answers other than 200 | {o['non2xx']} |",
            f"| heartbeats per `registry.heartbeat_batch` message in phase 1 (mean) | "
            f"{o['heartbeats'] / max(1, o.get('messages', 0)):.1f} |",
            "| gateway wrk latency p50 per round | "
            + ", ".join(r["gateway"]["p50"] for r in o["rounds"])
            + " |",
        ]
    if "lone" in f:
        lines.append(
            f"| lone heartbeat on the idle gateway (median of 50) | {f['lone']['median_ms']:.1f} ms |"
        )
    if "e2e" in f:
        e = f["e2e"]
        note = " (the fleet wrapped: some workspaces twice)" if e["wrapped"] else ""
        lines += [
            f"| **end to end, full rate** (wrk -t1 -c{args.e2e_connections}, {args.e2e_seconds} s, "
            f"each call a new workspace of {args.e2e_fleet:,}): answered, then applied in "
            f"PostgreSQL | **{e['applied_rate']:,.0f}/s applied** ({e['applied']:,} of "
            f"{e['expected']:,} answered{note}; answered at {e['answer_rate']:,.0f}/s, wrk p50 / "
            f"p99 {e['p50']} / {e['p99']}; the last applied {e['drain_s']:.1f} s after the last "
            f"answer; {e['non2xx']} non-200) |",
            f"| end to end: CPU per role | {format_roles(e['cpu'])} |",
        ]
    if "paced" in f:
        p = f["paced"]
        lines += [
            f"| **steady {args.rate:,.0f}/s** (open loop, bench/gateway_load.py, "
            f"{args.paced_connections} connections, {p['offered']:,} heartbeats in "
            f"{p['seconds']:.1f} s): answer latency from when each call was due | "
            f"p50 {p['p50_ms']:.1f} ms, **p99 {p['p99_ms']:.1f} ms**, max {p['max_ms']:.0f} ms "
            f"({p['ok']:,} of {p['answered']:,} answered 200) |",
            "| steady rate: answer → applied (`last_heartbeat_at` minus answer time), every "
            f"heartbeat | p50 {p['lag_p50'] * 1000:.0f} ms, p99 {p['lag_p99'] * 1000:.0f} ms, "
            f"**max {p['lag_max'] * 1000:.0f} ms**; {p['late']} later than 2 s, "
            f"{p['missing']} not applied |",
            f"| steady rate: CPU per role | {format_roles(p['cpu'])} |",
        ]
    if "memory" in f:
        m = f["memory"]
        samples = ", ".join(f"{mib:.0f}" for _, mib in m["samples"])
        lines.append(
            f"| gateway resident memory every {RSS_EVERY_SECONDS} s over "
            f"{args.memory_seconds} s at full rate (wrk -c{args.e2e_connections}, "
            f"{m['rate']:,.0f} req/s, worker consuming), MiB | {samples}; after "
            f"{WARM_UP_SECONDS} s: median {m['median']:.0f} MiB, "
            f"**{m['low']:+.1%} / {m['high']:+.1%}** |"
        )
    for rate, r in f.get("register", {}).items():
        lines.append(
            f"| registration offered at {rate}/s, one worker (prefork -c 2): p50 / p99 | "
            f"{r['p50']:.0f} / {r['p99']:.0f} ms ({r['count']:.0f} registrations, "
            f"{r['failures']:.0f} failed; {r['completed_per_s']:.1f}/s completed) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("amqp", "redis"), default="amqp")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--e2e-connections", type=int, default=64)
    parser.add_argument("--e2e-seconds", type=int, default=15)
    parser.add_argument("--e2e-fleet", type=int, default=150_000)
    parser.add_argument("--rate", type=float, default=3333)
    parser.add_argument("--paced-seconds", type=float, default=20)
    parser.add_argument("--paced-connections", type=int, default=256)
    parser.add_argument("--memory-seconds", type=int, default=300)
    parser.add_argument("--register-seconds", type=float, default=10.0)
    parser.add_argument("--skip", nargs="*", choices=PHASES, default=[])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install {tool})")
    figures = run(args)
    section = report(args, figures)
    print(section)
    if not args.no_write:
        write_section(PERFORMANCE_MD, "bench/gateway.py", section, heading=GATEWAY_HEADING)
        print("\nwritten into docs/PERFORMANCE.md")


if __name__ == "__main__":
    main()
