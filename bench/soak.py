"""Soak: the whole registry for --minutes at --rate heartbeats/s, with deaths, recoveries
and registrations mixed in; prints its figures and writes them into docs/PERFORMANCE.md.

Runs the processes docs/OPERATIONS.md lists, as it starts them, in a database and a
Redis database pair of their own: one heartbeat worker (`-Q registry.heartbeats --pool
prefork -c 2 --prefetch-multiplier 200`), the main worker (`-Q registry,registry.sweeps
-c 2`), beat and the liveness listener. A fleet of --fleet workspaces with tokens is
seeded (bench/common.seed_fleet) and heartbeats as `registry.heartbeat_batch` messages,
open loop: every --tick seconds the heartbeats due by the clock are published, whatever
the workers did. (Not through the gateway: docs/PERFORMANCE.md's gateway section
measured its end-to-end ceiling on this 2-core box well below 3,333/s.)

Mixed in: deaths (an agent stops heartbeating: it must be marked offline or
awaiting_agent by expiry or the backstop), recoveries (some dead agents come back) and
registrations (new workspaces via `registry.register`, which then heartbeat too).
Deaths stop early enough that every one is due to be marked before the end.

Reports: resident memory of every process after the warm-up and at the end; the
heartbeat lag (publish to applied: each heartbeat carries its publish time, in ms since
the run's start, as `uptime_seconds`, read back from the WORKSPACE_HEARTBEAT event the
worker publishes after its commit); sweep run times (the main worker's
`registry_sweep_duration_seconds`); events recorded vs published (structure_events rows
vs distinct event ids in `events:stream`); false transitions (live agents that went
offline or awaiting_agent); CPU per role from /proc.

Run: `.venv/bin/python bench/soak.py [--minutes 30] [--rate 3333] [--fleet 100000]
[--no-write] [--json out.json]`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common, procstats  # noqa: E402

RUN_ID = secrets.token_hex(3)
AMQP_BASE = os.environ.get("BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
MARKED = ("WORKSPACE_OFFLINE", "WORKSPACE_AWAITING_AGENT")


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=3333.0, help="heartbeats per second")
    p.add_argument("--fleet", type=int, default=100_000)
    p.add_argument(
        "--broker",
        choices=("amqp", "redis"),
        default="amqp",
        help="amqp: a RabbitMQ vhost of the run's own (OPERATIONS' advice at 100,000 agents); "
        "redis: the run's second Redis database",
    )
    p.add_argument("--tick", type=float, default=0.05, help="seconds between batches")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds (default 120, or a quarter of a short run)",
    )
    p.add_argument(
        "--deaths", type=int, default=None, help="agents that stop (default 0.5%% of the fleet)"
    )
    p.add_argument(
        "--recover-share", type=float, default=0.5, help="share of the dead that come back"
    )
    p.add_argument("--registrations", type=float, default=30.0, help="new workspaces per minute")
    p.add_argument(
        "--ttl",
        type=int,
        default=None,
        help="LIVENESS_TTL_SECONDS (default 180, or 2 heartbeat intervals in short runs)",
    )
    p.add_argument("--backstop-grace", type=int, default=None)
    p.add_argument("--backstop-interval", type=int, default=None)
    p.add_argument("--no-write", action="store_true", help="do not write docs/PERFORMANCE.md")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--note", default="", help="a line printed with the figures (e.g. the box was shared)"
    )
    args = p.parse_args(argv)
    total = args.minutes * 60
    short = total < 600
    args.interval = args.fleet / args.rate  # each agent heartbeats this often
    if args.warmup is None:
        args.warmup = min(120.0, total / 4)
    if args.ttl is None:
        args.ttl = max(30, int(2 * args.interval)) if short else 180
    if args.backstop_grace is None:
        args.backstop_grace = 10 if short else 30
    if args.backstop_interval is None:
        args.backstop_interval = 10 if short else 30
    if args.deaths is None:
        args.deaths = max(10, args.fleet // 200)
    # Every death is due to be marked (expiry or backstop) before the end of the run.
    args.settle = args.ttl + args.backstop_grace + args.backstop_interval + 20
    if total - args.settle < 20:
        raise SystemExit(f"--minutes {args.minutes}: too short for TTL {args.ttl} s + backstop")
    return args


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None


class Services:
    """The registry's processes as OPERATIONS starts them, each in its own process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.metrics_port = free_port()

    def _start(self, role: str, argv: list[str], **extra: str) -> Proc:
        log = self.log_dir / f"{role}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **self.env, "PYTHONPATH": str(ROOT), **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(role, popen, log)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
        self._start(
            "heartbeat worker",
            [*celery, "worker", "-Q", "registry.heartbeats", "--pool", "prefork", "-c", "2",
             "--prefetch-multiplier", "200", "-n", f"hb-{RUN_ID}@%h", "-l", "WARNING"],
            METRICS_PORT="0",
        )  # fmt: skip
        self._start(
            "main worker",
            [*celery, "worker", "-Q", "registry,registry.sweeps", "-c", "2",
             "-n", f"main-{RUN_ID}@%h", "-l", "WARNING"],
            METRICS_PORT=str(self.metrics_port), METRICS_ADDR="127.0.0.1",
        )  # fmt: skip
        self._start(
            "beat",
            [*celery, "beat", "-l", "WARNING", "-s", str(self.log_dir / "beat-schedule")],
            METRICS_PORT="0",
        )
        self._start("listener", [sys.executable, "-m", "workers.liveness"], METRICS_PORT="0")

    def check(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                tail = "\n".join(proc.log.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"{proc.role} exited ({proc.popen.returncode}):\n{tail}")

    def stop(self) -> None:
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
            # A prefork pool child outliving its parent would hold its memory: reap it.
            with suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return str(answer.read().decode())


def rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("rabbitmqctl not found: run with --broker redis")
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=120)


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int, keys: tuple[str, ...]) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    total = 0
    for line in lines:
        name, _, value = line.partition(":")
        if name in keys:
            total += int(value.split()[0])
    return total


def _pids() -> Iterator[tuple[int, str, int]]:
    """pid, comm, process group of every process."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = procstats._stat(int(entry))
            if stat is not None:
                yield int(entry), stat[0], stat[1]


def memory(services: Services, database: str) -> dict[str, float]:
    """MiB per role. PostgreSQL backends: private memory (RssAnon) of this database's
    backends, since their RSS also counts the shared buffers they touched."""
    rss = ("VmRSS",)
    mib: dict[str, float] = {}
    groups = {proc.popen.pid: proc.role for proc in services.procs}
    backends = 0
    for pid, comm, pgid in _pids():
        role = groups.get(pgid)
        keys: tuple[str, ...] = rss
        if role is None and comm == "postgres":
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if f" {database} " not in title:
                continue
            role, keys = "PostgreSQL backends (private)", ("RssAnon",)
            backends += 1
        elif role is None and comm == "redis-server":
            role = "Redis server (shared)"
        elif role is None and comm == "beam.smp":
            role = "RabbitMQ (shared)"
        if role is not None:
            mib[role] = mib.get(role, 0.0) + _status_kb(pid, keys) / 1024
    mib["_backends"] = backends
    return mib


# --------------------------------------------------------------------------- sweep metrics


_SAMPLE = re.compile(
    r"^registry_sweep_duration_seconds_(sum|count|bucket)\{([^}]*)\} ([0-9.e+-]+)$"
)


def sweep_histograms(text: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        kind, labels, value = m.groups()
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        entry = out.setdefault(found["sweep"], {"sum": 0.0, "count": 0.0, "buckets": {}})
        if kind == "bucket":
            le = float("inf") if found["le"] == "+Inf" else float(found["le"])
            entry["buckets"][le] = entry["buckets"].get(le, 0.0) + float(value)
        else:
            entry[kind] += float(value)
    return out


def sweep_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per sweep over the measured window: runs, mean and the p99 bucket's upper bound (s)."""
    figures: dict[str, dict[str, float]] = {}
    for sweep, end in after.items():
        start = before.get(sweep, {"sum": 0.0, "count": 0.0, "buckets": {}})
        runs = end["count"] - start["count"]
        if runs <= 0:
            continue
        p99 = float("inf")
        for le in sorted(end["buckets"]):
            if end["buckets"][le] - start["buckets"].get(le, 0.0) >= 0.99 * runs:
                p99 = le
                break
        figures[sweep] = {"runs": runs, "mean": (end["sum"] - start["sum"]) / runs, "p99_le": p99}
    return figures


# --------------------------------------------------------------------------- lag


class LagListener(threading.Thread):
    """Reads WORKSPACE_HEARTBEAT events (published after each batch's commit): publish
    time (uptime_seconds = ms since the run's start) to the moment the event arrives."""

    def __init__(self, redis_url: str, ids: set[str], t0: float) -> None:
        super().__init__(daemon=True)
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.ids = ids
        self.t0 = t0
        # Publish second and lag (s) of every heartbeat: compact, 6 million in 30 minutes.
        self.sent = array("d")
        self.lags = array("d")
        self.stopped = threading.Event()

    def run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("events:broadcast")
        head = '"event":"WORKSPACE_HEARTBEAT","workspace_id":"'
        while not self.stopped.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            now = time.time()
            data = message["data"].decode()
            at = data.find(head)
            if at < 0:
                continue
            ws = data[at + len(head) : at + len(head) + 36]
            if ws not in self.ids:
                continue  # another registry on this Redis server (channels are server-wide)
            sent_ms = int(data[data.rindex('"uptime_seconds":') + 17 :].rstrip("}"))
            if sent_ms <= 0:
                continue
            sent = self.t0 + sent_ms / 1000
            self.sent.append(sent - self.t0)
            self.lags.append(now - sent)
        pubsub.close()


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    ids: list[str]
    tokens: list[str]
    dead: set[int] = field(default_factory=set)
    deaths: dict[int, float] = field(default_factory=dict)  # index: time of its last beat
    recovered: set[int] = field(default_factory=set)
    registered: list[int] = field(default_factory=list)
    registration_ms: list[float] = field(default_factory=list)
    registration_errors: list[str] = field(default_factory=list)
    victims: set[int] = field(default_factory=set)
    last_beat: dict[int, float] = field(default_factory=dict)  # only for the victims
    recovered_at: dict[int, float] = field(default_factory=dict)
    sent: int = 0
    batches: int = 0
    behind_max: float = 0.0
    cursor: int = 0

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        size = len(self.ids)
        guard = 0
        while len(out) < n and guard < 2 * size:
            i = self.cursor % size
            self.cursor += 1
            guard += 1
            if i not in self.dead:
                out.append(i)
        return out


def heartbeat(load: Load, i: int, sent_ms: int) -> dict[str, Any]:
    return {
        "workspace_id": load.ids[i],
        "auth_token": load.tokens[i],
        "error_rate": 0.01,
        "active_tasks": 1,
        "uptime_seconds": sent_ms,
        "current_task": "serving",
        "monthly_spend": 1200,
    }


@dataclass
class Plan:
    """When agents die, and which come back, drawn once for the run."""

    deaths: list[tuple[float, int]]
    recovers: set[int]
    back_after: float  # after its last beat, a dead agent is surely marked
    last_recovery: float  # late enough for a heartbeat before the end
    recoveries: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def draw(cls, args: argparse.Namespace, fleet: int) -> Plan:
        total = args.minutes * 60
        rng = random.Random(18)
        # Deaths spread over [5 s, total - settle]: each is due to be marked before the end.
        times = sorted(rng.uniform(5, total - args.settle) for _ in range(args.deaths))
        deaths = list(zip(times, rng.sample(range(fleet), args.deaths), strict=True))
        recovers = {i for _, i in deaths if rng.random() < args.recover_share}
        back_after = args.ttl + args.backstop_grace + args.backstop_interval + 5
        return cls(deaths, recovers, back_after, total - args.interval - 15)


class Driver:
    """The open-loop load: heartbeats due by the clock, deaths, recoveries, registrations."""

    def __init__(
        self, args: argparse.Namespace, load: Load, client: Any, services: Services
    ) -> None:
        self.args = args
        self.load = load
        self.client = client
        self.services = services
        self.t0 = time.time()
        self.plan = Plan.draw(args, len(load.ids))
        load.victims = {i for _, i in self.plan.deaths}  # their last beat times their marking
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.pending: list[tuple[Future[str], str, float]] = []
        self.next_registration = 5.0

    def run(self, on_warm: Any) -> None:
        total = self.args.minutes * 60
        warm_done = False
        while True:
            now = time.time() - self.t0
            if now >= total:
                break
            if not warm_done and now >= self.args.warmup:
                warm_done = True
                on_warm()
            self.lives_and_deaths(now)
            if now < total - 15:
                self.register(now)
            self.collect_registrations()
            self.beat(now, max(1, int(now * 1000)))
            if self.load.batches % 200 == 0:
                self.services.check()
            time.sleep(max(0.0, self.args.tick - ((time.time() - self.t0) - now)))
        for future, _, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def lives_and_deaths(self, now: float) -> None:
        load, plan = self.load, self.plan
        while plan.deaths and plan.deaths[0][0] <= now:
            _, i = plan.deaths.pop(0)
            load.dead.add(i)
            last = load.deaths[i] = load.last_beat.get(i, 0.0)
            if i in plan.recovers and last + plan.back_after < plan.last_recovery:
                plan.recoveries.append((last + plan.back_after, i))
                plan.recoveries.sort()
        while plan.recoveries and plan.recoveries[0][0] <= now:
            _, i = plan.recoveries.pop(0)
            load.dead.discard(i)
            load.recovered.add(i)
            load.recovered_at[i] = self.t0 + now

    def register(self, now: float) -> None:
        if self.args.registrations <= 0 or now < self.next_registration:
            return
        self.next_registration += 60.0 / self.args.registrations
        new_id = str(uuid.uuid4())
        card = {"name": f"soak-{new_id[:8]}", "description": "soak", "skills": []}
        future = self.pool.submit(
            self.client.register, new_id, card, delivery_mode="poll", timeout=60
        )
        self.pending.append((future, new_id, time.time()))

    def collect_registrations(self) -> None:
        load = self.load
        for entry in [p for p in self.pending if p[0].done()]:
            self.pending.remove(entry)
            future, new_id, started = entry
            try:
                token = future.result()
            except Exception as exc:  # a refusal or timeout is a finding, not a crash
                load.registration_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            load.registration_ms.append((time.time() - started) * 1000)
            load.ids.append(new_id)  # it heartbeats from now on, like the rest
            load.tokens.append(token)
            load.registered.append(len(load.ids) - 1)

    def beat(self, now: float, sent_ms: int) -> None:
        """Publish every heartbeat due by now; `sent_ms` rides as uptime_seconds."""
        load = self.load
        due = int(self.args.rate * (time.time() - self.t0)) - load.sent
        if due <= 0:
            return
        load.behind_max = max(load.behind_max, due / self.args.rate)
        while due > 0:
            chunk = load.take(min(due, 1000))
            if not chunk:
                break
            self.client.heartbeat_batch([heartbeat(load, i, sent_ms) for i in chunk])
            load.sent += len(chunk)
            load.batches += 1
            due -= len(chunk)
            for i in chunk:
                if i in load.victims:
                    load.last_beat[i] = now

    def keep_beating(self, stop: threading.Event) -> None:
        """Heartbeats (without a lag stamp) while the run settles: no live agent expires."""
        while not stop.is_set():
            self.beat(time.time() - self.t0, 0)
            time.sleep(self.args.tick)


# --------------------------------------------------------------------------- checks


def events_check(engine: Any, redis_url: str, timeout: float) -> dict[str, Any]:
    """structure_events rows vs distinct event ids in events:stream, until equal or timeout."""
    import redis
    from sqlalchemy import text

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            rows = {int(r[0]) for r in conn.execute(text("SELECT id FROM structure_events"))}
        entries = 0
        streamed: set[int] = set()
        for _, fields in client.xrange("events:stream"):
            entries += 1
            event = json.loads(fields[b"data"])
            if event.get("event_id") is not None:
                streamed.add(int(event["event_id"]))
        if rows == streamed or time.monotonic() > deadline:
            return {
                "recorded": len(rows),
                "published": len(streamed),
                "stream_entries": entries,
                "missing_from_stream": len(rows - streamed),
                "not_recorded": len(streamed - rows),
            }
        time.sleep(2)


def transitions_check(
    engine: Any, load: Load, t0: float, limit: float, expiry_bound: float
) -> dict[str, Any]:
    from sqlalchemy import text

    dead_ever = {load.ids[i] for i in load.deaths}
    with engine.connect() as conn:
        marked = conn.execute(
            text(
                "SELECT workspace_id::text, event_type, extract(epoch FROM created_at) "
                "FROM structure_events WHERE event_type = ANY(:types)"
            ),
            {"types": list(MARKED)},
        ).all()
        statuses = dict(
            conn.execute(text("SELECT id::text, status FROM workspaces")).all()  # type: ignore[arg-type]
        )
    # A live agent marked at all, or a recovered one marked again after it came back.
    back = {load.ids[i]: at for i, at in load.recovered_at.items()}
    false = [
        ws
        for ws, _, at in marked
        if ws not in dead_ever or (ws in back and float(at) > back[ws] + 1)
    ]
    first_mark: dict[str, float] = {}
    for ws, _, at in marked:
        first_mark[ws] = min(first_mark.get(ws, float("inf")), float(at))
    delays: list[float] = []
    unmarked = 0
    for i, last in load.deaths.items():
        at = first_mark.get(load.ids[i])
        if at is None:
            unmarked += 1
        else:
            delays.append(at - (t0 + last))
    live = [i for i in range(len(load.ids)) if i not in load.dead]
    not_online = sum(1 for i in live if statuses.get(load.ids[i]) not in ("online",))
    still_dead_online = sum(
        1 for i in load.dead if statuses.get(load.ids[i]) not in ("offline", "awaiting_agent")
    )
    return {
        "false_transitions": len(false),
        "deaths": len(load.deaths),
        "unmarked_deaths": unmarked,
        "mark_delay_max": max(delays) if delays else 0.0,
        "mark_delay_p50": statistics.median(delays) if delays else 0.0,
        "mark_limit": limit,
        "late_marks": sum(1 for d in delays if d > limit),
        # Before TTL + grace only the listener can have marked it (on the key's expiry).
        "marked_by_expiry": sum(1 for d in delays if d < expiry_bound),
        "recovered": len(load.recovered),
        "recovered_online": sum(1 for i in load.recovered if statuses.get(load.ids[i]) == "online"),
        "live_not_online": not_online,
        "dead_not_marked_now": still_dead_online,
        "registered": len(load.registered),
        "registered_rows": sum(1 for i in load.registered if load.ids[i] in statuses),
    }


# --------------------------------------------------------------------------- cpu


def role_cpu(
    before: procstats.Snapshot, after: procstats.Snapshot, services: Services, database: str
) -> dict[str, float]:
    """Cores used per role between the snapshots (ours by process group; the rest by name)."""
    groups = {proc.popen.pid: proc.role for proc in services.procs}
    shares = procstats.cpu_shares(before, after, set(groups), database=database)
    wall = (after.machine_total - before.machine_total) / procstats.CORES
    per_group: dict[str, float] = {}
    for pid, (_, pgid, ticks) in after.ticks.items():
        if pgid in groups:
            prev = before.ticks.get(pid)
            delta = (
                ticks - prev[2]
                if prev and before.started.get(pid) == after.started.get(pid)
                else ticks
            )
            per_group[groups[pgid]] = per_group.get(groups[pgid], 0.0) + max(0, delta)
    out = {role: t / wall for role, t in per_group.items()} if wall > 0 else {}
    for key in (
        "bench",
        "postgres",
        "redis",
        "rabbitmq",
        "other",
        "machine",
        "worker_wait",
        "psi_some",
    ):
        if key in shares:
            out[key] = shares[key]
    return out


# --------------------------------------------------------------------------- main


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Setting:
    """Where this run lives: its own database and Redis database pair."""

    args: argparse.Namespace
    database: str
    redis_url: str
    broker_url: str
    result_url: str
    env: dict[str, str]
    log_dir: Path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_db, broker_db, lock = common.reserve_redis_dbs()
    database = common.unique_database_name("molecule_registry_soak")
    redis_url = f"{common.REDIS_BASE}/{data_db}"
    result_url = f"{common.REDIS_BASE}/{broker_db}"
    vhost = f"molecule_registry_soak_{RUN_ID}" if args.broker == "amqp" else ""
    broker_url = f"{AMQP_BASE}/{vhost}" if vhost else result_url
    env = common.service_env(
        database,
        redis_url,
        broker_url,
        CELERY_RESULT_BACKEND=result_url,
        LIVENESS_TTL_SECONDS=str(args.ttl),
        REMOTE_LIVENESS_STALE_AFTER=str(args.ttl),
        BACKSTOP_GRACE_SECONDS=str(args.backstop_grace),
        BACKSTOP_SWEEP_INTERVAL=str(args.backstop_interval),
    )
    os.environ.update(env)
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    common.create_database(database)
    try:
        if vhost:
            rabbitmqctl("add_vhost", vhost)
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        results = run(Setting(args, database, redis_url, broker_url, result_url, env, log_dir))
    finally:
        if vhost:
            rabbitmqctl("delete_vhost", vhost)
        common.drop_database(database)
        import redis

        for db in (data_db, broker_db):
            redis.Redis.from_url(f"{common.REDIS_BASE}/{db}").flushdb()
        lock.close()
    section = render(args, results)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if not args.no_write:
        common.write_section(
            common.PERFORMANCE_MD, "bench/soak.py", section, heading="## Soak — `bench/soak.py`"
        )
    return 0


def run(at: Setting) -> dict[str, Any]:
    from sqlalchemy import text

    from molecule_registry_client import RegistryClient
    from registry.db import get_engine

    args = at.args
    started_seed = time.time()
    fleet = common.seed_fleet(
        args.fleet,
        columns={"delivery_mode": "'poll'", "active_tasks": "1", "current_task": "'serving'"},
    )
    print(
        f"[soak] fleet {args.fleet:,} seeded in {time.time() - started_seed:.0f} s; load for "
        f"{args.minutes:g} min at {args.rate:,.0f}/s (logs in {at.log_dir})",
        flush=True,
    )
    load = Load(list(fleet), list(fleet.values()))
    services = Services(at.env, at.log_dir)
    services.start()
    client = RegistryClient(at.broker_url, result_backend=at.result_url)
    engine = get_engine()
    marks: dict[str, Any] = {}
    try:
        _wait_ready(services)
        # Seeded rows count as fresh now: the first cycle reaches each within an interval.
        with engine.begin() as conn:
            conn.execute(text("UPDATE workspaces SET last_heartbeat_at = now()"))
        driver = Driver(args, load, client, services)
        lag = LagListener(at.redis_url, set(load.ids), driver.t0)
        lag.start()

        def on_warm() -> None:
            marks["mem_start"] = memory(services, at.database)
            marks["cpu_start"] = procstats.snapshot({p.popen.pid for p in services.procs})
            marks["sweeps_start"] = sweep_histograms(services.scrape())
            marks["warm_at"] = time.time() - driver.t0
            print(f"[soak] warm-up over: {fmt_mem(marks['mem_start'])}", flush=True)

        driver.run(on_warm)
        marks["elapsed"] = time.time() - driver.t0
        marks["mem_end"] = memory(services, at.database)
        marks["cpu_end"] = procstats.snapshot({p.popen.pid for p in services.procs})
        marks["sweeps_end"] = sweep_histograms(services.scrape())
        # Heartbeats keep flowing while events settle, so no live agent expires meanwhile.
        stop = threading.Event()
        beater = threading.Thread(target=driver.keep_beating, args=(stop,), daemon=True)
        beater.start()
        try:
            marks["events"] = events_check(engine, at.redis_url, timeout=60)
        finally:
            stop.set()
            beater.join(timeout=10)
        lag.stopped.set()
    finally:
        services.stop()
        client.close()
    lag.join(timeout=5)
    limit = args.ttl + args.backstop_grace + args.backstop_interval + 5
    checks = transitions_check(engine, load, driver.t0, limit, args.ttl + args.backstop_grace)
    marks["lag"] = (lag.sent, lag.lags)
    return collect(at, load, services, marks, checks)


def collect(
    at: Setting, load: Load, services: Services, marks: dict[str, Any], checks: dict[str, Any]
) -> dict[str, Any]:
    sent, lags = marks["lag"]
    n = min(len(sent), len(lags))  # the reader thread has stopped; be safe anyway
    samples = [lag for at, lag in zip(sent[:n], lags[:n], strict=True) if at >= marks["warm_at"]]
    start, end = marks["mem_start"], marks["mem_end"]
    return {
        "args": {k: str(v) for k, v in vars(at.args).items()},
        "elapsed": marks["elapsed"],
        "sent": load.sent,
        "rate_sent": load.sent / marks["elapsed"],
        "behind_max": load.behind_max,
        "lag": {
            "count": len(samples),
            "p50": pct(samples, 0.5),
            "p99": pct(samples, 0.99),
            "max": max(samples) if samples else float("nan"),
        },
        "mem_start": start,
        "mem_end": end,
        "mem_change": {
            role: (end.get(role, 0.0) - v) / v
            for role, v in start.items()
            if not role.startswith("_") and v > 0
        },
        "sweeps": sweep_figures(marks["sweeps_start"], marks["sweeps_end"]),
        "cpu": role_cpu(marks["cpu_start"], marks["cpu_end"], services, at.database),
        "events": marks["events"],
        "registration_ms": {
            "p50": pct(load.registration_ms, 0.5),
            "p99": pct(load.registration_ms, 0.99),
        },
        "registration_errors": load.registration_errors[:5],
        **checks,
    }


def _wait_ready(services: Services, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        services.check()
        with suppress(OSError):
            services.scrape()
            time.sleep(3)  # the heartbeat worker starts alongside the main one
            services.check()
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the main worker's metrics endpoint never answered")
        time.sleep(0.5)


# --------------------------------------------------------------------------- report


def fmt_mem(mem: dict[str, float]) -> str:
    return ", ".join(f"{role} {v:.0f} MiB" for role, v in mem.items() if not role.startswith("_"))


def render(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lag, ev = r["lag"], r["events"]
    ok = lambda good: "met" if good else "**missed**"  # noqa: E731
    broker = "RabbitMQ (a vhost of its own)" if args.broker == "amqp" else "Redis"
    mem_rows = []
    for role, start in r["mem_start"].items():
        if role.startswith("_"):
            continue
        change = r["mem_change"].get(role, 0.0)
        judged = "shared" not in role
        verdict = ok(abs(change) <= 0.10) if judged else "not judged (shared)"
        mem_rows.append(
            f"| {role} | {start:.0f} | {r['mem_end'].get(role, 0.0):.0f} | {change:+.1%} | {verdict} |"
        )
    sweep_rows = [
        f"| {name} | {int(f['runs'])} | {f['mean'] * 1000:.1f} | ≤ {f['p99_le'] * 1000:.0f} |"
        for name, f in sorted(r["sweeps"].items())
    ]
    cpu = ", ".join(
        f"{k} {v:.2f}" for k, v in r["cpu"].items() if k not in ("worker_wait", "psi_some")
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this project's 2-core "
        f"machine by `.venv/bin/python bench/soak.py --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--fleet {args.fleet} --broker {args.broker}`{(' — ' + args.note) if args.note else ''}.",
        "",
        f"The registry as docs/OPERATIONS.md runs it (heartbeat worker `-Q registry.heartbeats "
        f"--pool prefork -c 2 --prefetch-multiplier 200`, main worker `-Q registry,registry.sweeps "
        f"-c 2`, beat, liveness listener; {broker} broker), a fleet of {args.fleet:,} workspaces "
        f"with tokens heartbeating every {args.interval:.0f} s, published open loop as "
        f"`registry.heartbeat_batch` messages every {args.tick * 1000:.0f} ms (not through the "
        "gateway: its end-to-end ceiling on this box, in the Gateway section, is below this rate). "
        f"Mixed in: {r['deaths']:,} deaths, {r['recovered']:,} recoveries, {r['registered']:,} "
        f"registrations. LIVENESS_TTL_SECONDS {args.ttl}, BACKSTOP_GRACE_SECONDS "
        f"{args.backstop_grace}, BACKSTOP_SWEEP_INTERVAL {args.backstop_interval}; warm-up "
        f"{args.warmup:.0f} s.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| heartbeats published | {r['sent']:,} in {r['elapsed']:.0f} s = {r['rate_sent']:,.0f}/s "
        f"(publisher at most {r['behind_max']:.2f} s behind its clock) | {args.rate:,.0f}/s |",
        f"| heartbeat lag, publish → applied (after warm-up, {lag['count']:,} heartbeats) | "
        f"p50 {lag['p50'] * 1000:.0f} ms, **p99 {lag['p99'] * 1000:.0f} ms**, max {lag['max'] * 1000:.0f} ms "
        f"| p99 ≤ 1 s: {ok(lag['p99'] <= 1.0)} |",
        f"| events recorded / published (distinct ids in events:stream) | {ev['recorded']:,} / "
        f"{ev['published']:,} ({ev['stream_entries']:,} stream entries) | equal: "
        f"{ok(ev['missing_from_stream'] == 0 and ev['not_recorded'] == 0)} |",
        f"| false transitions (live agents marked offline/awaiting_agent) | "
        f"{r['false_transitions']} | 0: {ok(r['false_transitions'] == 0)} |",
        f"| dead agents marked | {r['deaths'] - r['unmarked_deaths']:,} of {r['deaths']:,}; last beat → "
        f"marked p50 {r['mark_delay_p50']:.0f} s, max {r['mark_delay_max']:.0f} s ({r['late_marks']} over "
        f"{r['mark_limit']} s; {r['marked_by_expiry']} within TTL + grace, i.e. by the key's "
        f"expiry) | all: {ok(r['unmarked_deaths'] == 0)} |",
        f"| recovered agents online at the end | {r['recovered_online']:,} of {r['recovered']:,} | all |",
        f"| registrations | {r['registered_rows']:,} rows of {r['registered']:,} answered, "
        f"{len(r['registration_errors'])} failed; p50 {r['registration_ms']['p50']:.0f} ms, "
        f"p99 {r['registration_ms']['p99']:.0f} ms | |",
        "",
        "Resident memory, MiB (start = after the warm-up; worker = parent + pool children; "
        "PostgreSQL = private memory of this run's backends; Redis and RabbitMQ are shared "
        "with everything else on the box):",
        "",
        "| process | start | end | change | flat within ±10% |",
        "|---|---:|---:|---:|---|",
        *mem_rows,
        "",
        "Sweep runs over the measured window (the main worker's `registry_sweep_duration_seconds`):",
        "",
        "| sweep | runs | mean ms | p99 (bucket bound) ms |",
        "|---|---:|---:|---:|",
        *sweep_rows,
        "",
        f"CPU per role over the measured window, cores of {procstats.CORES}: {cpu}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
