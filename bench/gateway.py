"""Gateway benchmark: prints its figures and writes them into docs/PERFORMANCE.md.

1. Authenticated HTTP heartbeats per second through a real gateway
   (`molecule-registry gateway`), the broker absorbing them (no worker), against a
   hello-world Starlette endpoint on the same uvicorn (httptools, uvloop): the same wrk
   (`-t1 -c<C>`, a Lua script posting each fleet member's heartbeat with its bearer
   token), alternated within one run; medians of the rounds.
2. The latency of a lone heartbeat on the idle gateway (one caller, one at a time).
3. Registration latency (p50, p99) at a steady 50 registrations per second through the
   gateway and a real worker subprocess (new workspaces, poll mode).

Run: `.venv/bin/python bench/gateway.py [--broker amqp|redis] [--connections 64]
[--seconds 5] [--rounds 3] [--fleet 1000] [--no-write]` (needs wrk: `apt-get install
wrk`; a database and Redis databases of its own, dropped after). `RATE_LIMIT` is
raised for the run: one token's 600 calls a minute would otherwise end it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.common import (  # noqa: E402
    PERFORMANCE_MD,
    REDIS_BASE,
    fresh_database,
    reserve_redis_dbs,
    seed_fleet,
    service_env,
    unique_database_name,
    write_section,
)

DATA_DB, BROKER_DB, _LOCK = reserve_redis_dbs()
DB_NAME = unique_database_name("molecule_registry_gwbench")
ENV = service_env(
    DB_NAME,
    f"{REDIS_BASE}/{DATA_DB}",
    f"{REDIS_BASE}/{BROKER_DB}",
    METRICS_PORT="0",
    MOLECULE_DEPLOY_MODE="",
    MOLECULE_ORG_ID="",
)
os.environ.update(ENV)

import httpx  # noqa: E402
from gateway_helpers import gateway_argv  # noqa: E402
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env  # noqa: E402

GATEWAY_HEADING = "## Gateway — `bench/gateway.py`"  # above the section when first written
LOG_DIR = Path(tempfile.mkdtemp(prefix="gwbench-"))
REGISTER_RATE = 50.0
LOW_REGISTER_RATE = 5.0  # the gateway's own share of a registration's latency


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def lua_script(fleet: dict[str, str]) -> Path:
    """wrk's script: each request is the next fleet member's heartbeat with its bearer."""
    ids = ",".join(f'"{ws}"' for ws in fleet)
    tokens = ",".join(f'"{token}"' for token in fleet.values())
    path = LOG_DIR / "heartbeat.lua"
    path.write_text(
        f"""
local ids = {{{ids}}}
local tokens = {{{tokens}}}
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


def measured(
    url: str, script: Path, connections: int, seconds: int, pid: int
) -> tuple[float, int, str, float]:
    """wrk's figures plus the server process's CPU microseconds per answered request:
    what a request costs the server whatever else the machine is doing."""
    before = cpu_seconds(pid)
    rate, bad, p50 = wrk(url, script, connections, seconds)
    used = cpu_seconds(pid) - before
    return rate, bad, p50, used / max(1.0, rate * seconds) * 1e6


def wrk(url: str, script: Path, connections: int, seconds: int) -> tuple[float, int, str]:
    """(requests/s, non-2xx answers, latency p50) of one wrk run."""
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE)
    return rate, int(bad.group(1)) if bad else 0, p50.group(1) if p50 else "?"


def lone_heartbeat_ms(base: str, fleet: dict[str, str], count: int = 50) -> float:
    ws, token = next(iter(fleet.items()))
    took = []
    with httpx.Client(base_url=base, timeout=10) as http:
        for _ in range(count):
            started = time.perf_counter()
            answer = http.post(
                "/registry/heartbeat",
                json={"workspace_id": ws, "uptime_seconds": 1},
                headers={"Authorization": f"Bearer {token}"},
            )
            took.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
            time.sleep(0.05)  # idle between calls: each one waits alone
    return statistics.median(took)


async def registrations(base: str, seconds: float, rate: float) -> tuple[list[float], int]:
    """Registrations of new workspaces at `rate` per second; (latencies ms, failures)."""
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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(args: argparse.Namespace) -> dict[str, object]:
    # Tokens as registered and never used, as the gateway first sees them.
    fleet = seed_fleet(args.fleet, token_used=False, analyze=False)
    script = lua_script(fleet)
    figures: dict[str, object] = {}
    with ExitStack() as stack:
        broker = ENV["CELERY_BROKER_URL"]
        if args.broker == "amqp":
            from liveness_helpers import private_rabbitmq_vhost

            broker = stack.enter_context(private_rabbitmq_vhost())
        env = process_env(ENV, CELERY_BROKER_URL=broker, RATE_LIMIT=str(10**9))
        gw_port, hello_port = free_port(), free_port()
        gateway_process = stack.enter_context(
            managed_process(
                gateway_argv(gw_port, "warning"), env=env, log_dir=LOG_DIR, name="gateway"
            )
        )
        hello_argv = [
            sys.executable, "-m", "uvicorn", "gateway_hello_app:app", "--app-dir", str(ROOT / "bench"),
            "--port", str(hello_port), "--http", "httptools", "--loop", "uvloop",
            "--log-level", "warning", "--no-access-log", "--no-server-header",
        ]  # fmt: skip
        hello_process = stack.enter_context(
            managed_process(hello_argv, env=env, log_dir=LOG_DIR, name="hello")
        )
        wait_for_port(gw_port)
        wait_for_port(hello_port)
        gateway_url, hello_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{hello_port}"

        figures["lone_ms"] = lone_heartbeat_ms(gateway_url, fleet)
        wrk(gateway_url, script, args.connections, 2)  # warm: token cache, connections
        wrk(hello_url, script, args.connections, 2)
        hello, gateway, bad, p50s, hello_cpu, gateway_cpu = [], [], 0, [], [], []
        for _ in range(args.rounds):
            rate, _bad, _p50, cpu = measured(
                hello_url, script, args.connections, args.seconds, hello_process.proc.pid
            )
            hello.append(rate)
            hello_cpu.append(cpu)
            rate, non2xx, p50, cpu = measured(
                gateway_url, script, args.connections, args.seconds, gateway_process.proc.pid
            )
            gateway.append(rate)
            gateway_cpu.append(cpu)
            bad += non2xx
            p50s.append(p50)
        figures.update(
            hello=statistics.median(hello),
            gateway=statistics.median(gateway),
            hello_cpu=statistics.median(hello_cpu),
            gateway_cpu=statistics.median(gateway_cpu),
            hello_runs=hello,
            gateway_runs=gateway,
            non2xx=bad,
            gateway_p50=p50s,
        )

        stack.enter_context(
            managed_process(
                # The registry queue's worker as docs/OPERATIONS.md runs it (prefork, -c 2).
                celery_worker_argv(["registry"], concurrency=2),
                env=env,
                log_dir=LOG_DIR,
                ready=WORKER_READY,
                timeout=60,
                name="worker",
            )
        )
        for rate in (LOW_REGISTER_RATE, REGISTER_RATE):
            started = time.perf_counter()
            latencies, failures = asyncio.run(
                registrations(gateway_url, args.register_seconds, rate)
            )
            took = time.perf_counter() - started
            figures[f"register_{rate:g}"] = {
                "count": len(latencies),
                "failures": failures,
                "p50": percentile(latencies, 0.5) if latencies else float("nan"),
                "p99": percentile(latencies, 0.99) if latencies else float("nan"),
                "completed_per_s": len(latencies) / took,
            }
    return figures


def report(args: argparse.Namespace, f: dict[str, object]) -> str:
    share = float(f["gateway"]) / float(f["hello"])  # type: ignore[arg-type]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    runs = lambda key: ", ".join(f"{v:,.0f}" for v in f[key])  # type: ignore[attr-defined]  # noqa: E731
    return "\n".join(
        [
            f"Measured {stamp} on this machine (2 cores shared with other work; figures are "
            f"noisy; 1-minute load average {load:.1f} at the end), by `.venv/bin/python "
            f"bench/gateway.py --broker {args.broker} --connections {args.connections} "
            f"--seconds {args.seconds} --rounds {args.rounds} --fleet {args.fleet}`. "
            f"wrk -t1 -c{args.connections}, hello and gateway alternated {args.rounds} times "
            "in one run; medians. The broker absorbs the heartbeats (no worker); "
            f"{args.fleet:,} workspaces, each call the next one's heartbeat with its token.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| hello-world Starlette endpoint, same uvicorn | {f['hello']:,.0f} req/s ({runs('hello_runs')}) |",
            f"| gateway: authenticated heartbeats, {args.broker} broker | {f['gateway']:,.0f} req/s ({runs('gateway_runs')}); {share:.0%} of hello-world |",
            f"| server CPU per request (its process, all threads): hello-world / gateway | "
            f"{f['hello_cpu']:.0f} / {f['gateway_cpu']:.0f} µs: on equal CPU the gateway "
            f"would answer {float(f['hello_cpu']) / float(f['gateway_cpu']):.0%} of "  # type: ignore[arg-type]
            "hello-world's rate (the broker's own CPU not counted) |",
            f"| gateway answers other than 200 | {f['non2xx']} |",
            f"| gateway wrk latency p50 per round | {', '.join(f['gateway_p50'])} |",  # type: ignore[arg-type]
            f"| lone heartbeat on the idle gateway (median of 50) | {f['lone_ms']:.1f} ms |",
            *(
                register_row(rate, f[f"register_{rate:g}"])
                for rate in (LOW_REGISTER_RATE, REGISTER_RATE)
            ),  # type: ignore[arg-type]
        ]
    )


def register_row(rate: float, r: dict[str, float]) -> str:
    return (
        f"| registration offered at {rate:g}/s, one worker (prefork -c 2): p50 / p99 | "
        f"{r['p50']:.0f} / {r['p99']:.0f} ms ({r['count']:.0f} registrations, "
        f"{r['failures']:.0f} failed; {r['completed_per_s']:.1f}/s completed) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("amqp", "redis"), default="amqp")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=1000)
    parser.add_argument("--register-seconds", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    try:
        with fresh_database(DB_NAME):
            figures = run(args)
    finally:
        _LOCK.close()
    section = report(args, figures)
    print(section)
    if not args.no_write:
        write_section(PERFORMANCE_MD, "bench/gateway.py", section, heading=GATEWAY_HEADING)
        print("\nwritten into docs/PERFORMANCE.md")


if __name__ == "__main__":
    main()
