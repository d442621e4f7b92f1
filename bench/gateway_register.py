"""Registration latency through the gateway: prints its figures and writes them into
docs/PERFORMANCE.md.

An open-loop load of `POST /registry/register` calls for new workspaces (poll mode, as
`molecule connect` registers) at a steady rate (default 50/s) for a fixed time (default
60 s) through a real gateway (`molecule-registry gateway`), a real worker as
docs/OPERATIONS.md runs the `registry` queue's (`celery -A workers.app worker -Q
registry,registry.sweeps -c 2`, prefork), RabbitMQ (a vhost of its own), Redis (the
result backend and the events) and PostgreSQL (a database of its own). Open loop: each
call starts on its schedule whether or not earlier ones were answered, so a backlog
shows in the latencies instead of slowing the load. Latency is the caller's, from the
request sent to the answer (with its token) read. CPU per role from /proc during the
load says what bounds it.

Run: `.venv/bin/python bench/gateway_register.py [--rate 50] [--seconds 60] [--no-write]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
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
    REDIS_BASE,
    free_port,
    fresh_database,
    reserve_redis_dbs,
    service_env,
    unique_database_name,
    wait_for_port,
    write_section,
)

DATA_DB, BROKER_DB, _LOCK = reserve_redis_dbs()
DB_NAME = unique_database_name("molecule_registry_regbench")
ENV = service_env(
    DB_NAME,
    f"{REDIS_BASE}/{DATA_DB}",
    f"{REDIS_BASE}/{BROKER_DB}",
    METRICS_PORT="0",
    MOLECULE_DEPLOY_MODE="",
    MOLECULE_ORG_ID="",
)
os.environ.update(ENV)

from gateway_helpers import gateway_argv  # noqa: E402
from liveness_helpers import private_rabbitmq_vhost  # noqa: E402
from workerproc import managed_process, process_env  # noqa: E402

from molecule_registry_demo.simulator.processes import celery_argv  # noqa: E402

HEADING = "## Gateway registrations — `bench/gateway_register.py`"
MARKER = "bench/gateway_register.py"
LOG_DIR = Path(tempfile.mkdtemp(prefix="regbench-"))
# The main worker exactly as docs/OPERATIONS.md runs it (prefork, its default log level,
# which does not log readiness: the first answered registration shows it).
WORKER_COMMAND = "celery -A workers.app worker -Q registry,registry.sweeps -c 2"
WORKER_ARGV = celery_argv("worker", "-Q", "registry,registry.sweeps", "-c", "2", "-n", "reg@%h")


class Load:
    """The open-loop load's outcome: each answered call's latency, and the others."""

    def __init__(self) -> None:
        self.latencies: list[float] = []  # ms, successful registrations with a token
        self.failures: dict[str, int] = {}  # "status: text" -> count
        self.started_late_ms: list[float] = []  # how late each call left (generator lag)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


class Http:
    """A minimal HTTP/1.1 keep-alive client for JSON POSTs (the load generator shares
    the box with what it measures: httpx cost it a fifth of a core at 50 calls a
    second, this a few hundredths). One request per connection at a time; idle
    connections are reused, a new one is opened when none is free."""

    def __init__(self, port: int) -> None:
        self.port = port
        # (reader, writer, when it was last answered on): the server closes a connection
        # idle for 5 s (uvicorn's keep-alive), so an older one is not reused.
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        while self._idle and time.monotonic() - self._idle[-1][2] > IDLE_REUSE_SECONDS:
            self._idle.pop()[1].close()
        if self._idle:
            reader, writer, _at = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = json.loads(await reader.readexactly(length)) if length else {}
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, answer

    def close(self) -> None:
        for _reader, writer, _at in self._idle:
            writer.close()


IDLE_REUSE_SECONDS = 2.0


def new_registration() -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "agent_card": {"name": "bench"}, "delivery_mode": "poll"}


async def first_answer(http: Http, timeout: float = 90) -> None:
    """Registrations until one is answered: the worker is up and has done one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            if (await http.post("/registry/register", new_registration()))[0] == 200:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no registration answered within {timeout:g} s")


async def register_once(http: Http, load: Load | None) -> None:
    started = time.perf_counter()
    try:
        status, answer = await http.post("/registry/register", new_registration())
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        if load is not None:
            load.fail(type(exc).__name__)
        return
    took = (time.perf_counter() - started) * 1000
    if load is None:
        return
    if status == 200 and answer.get("auth_token"):
        load.latencies.append(took)
    else:
        load.fail(f"{status}: {str(answer)[:80]}")


async def open_loop(port: int, rate: float, seconds: float, warm: int) -> Load:
    load = Load()
    http = Http(port)
    try:
        await first_answer(http)
        # Warm: connections, the worker's pool processes, the token secret, the caches.
        for _ in range(warm):
            await register_once(http, None)
        tasks = []
        start = time.perf_counter()
        for i in range(int(seconds * rate)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            load.started_late_ms.append(max(0.0, time.perf_counter() - due) * 1000)
            tasks.append(asyncio.create_task(register_once(http, load)))
        await asyncio.gather(*tasks)
    finally:
        http.close()
    return load


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def role_shares(
    before: procstats.Snapshot, after: procstats.Snapshot, worker: int, gateway: int
) -> dict[str, float]:
    """procstats' roles, with the gateway's process group split out of `other`."""
    shares = procstats.cpu_shares(before, after, {worker}, DB_NAME)
    wall_ticks = (after.machine_total - before.machine_total) / procstats.CORES
    used = 0
    for pid, (_comm, pgid, ticks) in after.ticks.items():
        if pgid != gateway:
            continue
        previous = before.ticks.get(pid)
        used += ticks - previous[2] if previous is not None else ticks
    shares["gateway"] = used / wall_ticks if wall_ticks > 0 else 0.0
    shares["other"] = max(0.0, shares.get("other", 0.0) - shares["gateway"])
    return shares


def format_roles(shares: dict[str, float]) -> str:
    order = ["gateway", "worker", "postgres", "redis", "rabbitmq", "bench", "other", "machine"]
    text = f"cores used of {procstats.CORES}: " + ", ".join(
        f"{role} {shares.get(role, 0.0):.2f}" for role in order
    )
    if "worker_wait" in shares:
        text += f"; worker runnable but waiting for a CPU {shares['worker_wait']:.0%}"
    if "psi_some" in shares:
        text += f"; some task waiting for a CPU {min(shares['psi_some'], 1.0):.0%} of the time"
    return text


def run(args: argparse.Namespace) -> dict[str, object]:
    with ExitStack() as stack:
        broker = stack.enter_context(private_rabbitmq_vhost())
        env = process_env(ENV, CELERY_BROKER_URL=broker, RATE_LIMIT=str(10**9))
        port = free_port()
        gateway = stack.enter_context(
            managed_process(gateway_argv(port, "warning"), env=env, log_dir=LOG_DIR, name="gw")
        )
        worker = stack.enter_context(
            managed_process(WORKER_ARGV, env=env, log_dir=LOG_DIR, name="worker")
        )
        wait_for_port(port)
        before = procstats.snapshot({worker.proc.pid})
        began = time.perf_counter()
        load = asyncio.run(open_loop(port, args.rate, args.seconds, args.warm))
        took = time.perf_counter() - began
        after = procstats.snapshot({worker.proc.pid})
        shares = role_shares(before, after, worker.proc.pid, gateway.proc.pid)
    return {"load": load, "took": took, "shares": shares}


def report(args: argparse.Namespace, figures: dict[str, object]) -> str:
    load: Load = figures["load"]  # type: ignore[assignment]
    took = float(figures["took"])  # type: ignore[arg-type]
    lat = load.latencies
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    failures = ", ".join(f"{n} x {why}" for why, n in load.failures.items()) or "none"
    offered = int(args.rate * args.seconds)
    return "\n".join(
        [
            f"Measured {stamp} on this machine (2 cores shared with other work; 1-minute "
            f"load average {os.getloadavg()[0]:.1f} at the end), by `.venv/bin/python "
            f"bench/gateway_register.py --rate {args.rate:g} --seconds {args.seconds:g}`: "
            f"{offered:,} registrations of new workspaces (poll mode) offered open-loop at "
            f"{args.rate:g}/s through one gateway (`molecule-registry gateway`, defaults), "
            f"one worker as docs/OPERATIONS.md runs it (`{WORKER_COMMAND}`, prefork, "
            "defaults), RabbitMQ, Redis and PostgreSQL, all on this box.",
            "",
            "| figure | value | target |",
            "|---|---|---|",
            f"| registrations answered with a token | {len(lat):,} of {offered:,} "
            f"({len(lat) / took:.1f}/s over {took:.0f} s); failed: {failures} | all |",
            f"| latency p50 | {percentile(lat, 0.5):.1f} ms | ≤ 25 ms |",
            f"| latency p90 | {percentile(lat, 0.9):.1f} ms | |",
            f"| latency p99 | {percentile(lat, 0.99):.1f} ms | ≤ 100 ms |",
            f"| latency max | {max(lat, default=float('nan')):.1f} ms | |",
            f"| load generator lateness p99 (a call leaving after its slot) | "
            f"{percentile(load.started_late_ms, 0.99):.1f} ms | |",
            "",
            "CPU during the load (1.00 = one core; `other` is everything else on the box): "
            + format_roles(figures["shares"])  # type: ignore[arg-type]
            + ".",
            "",
            cost_per_registration(figures["shares"], len(lat) / took),  # type: ignore[arg-type]
        ]
    )


def cost_per_registration(shares: dict[str, float], rate: float) -> str:
    """CPU milliseconds each answered registration cost each role of the chain, and the
    cores the chain needs at the offered rate."""
    chain = ["gateway", "worker", "postgres", "redis", "rabbitmq"]
    each = {role: shares.get(role, 0.0) * 1000 / rate for role in chain} if rate else {}
    total = sum(each.values())
    parts = ", ".join(f"{role} {ms:.1f}" for role, ms in each.items())
    return (
        f"CPU per answered registration (ms of one core): {parts}; {total:.1f} in all "
        f"(the shared PostgreSQL, Redis and RabbitMQ servers include others' work)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="registrations per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warm", type=int, default=20, help="registrations before the load")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    try:
        with fresh_database(DB_NAME):
            figures = run(args)
    finally:
        _LOCK.close()
    section = report(args, figures)
    print(section)
    if not args.no_write:
        write_section(PERFORMANCE_MD, MARKER, section, heading=HEADING)
        print("\nwritten into docs/PERFORMANCE.md")
    load: Load = figures["load"]  # type: ignore[assignment]
    print(f"median latency {statistics.median(load.latencies or [float('nan')]):.1f} ms")


if __name__ == "__main__":
    main()
