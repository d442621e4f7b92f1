"""Heartbeat throughput against Celery's own ceiling, on RabbitMQ and Redis, in one run.

Every figure is measured in the same run, on the same machine, so the ratios hold even
when the machine is noisy. Per broker:

1. raw kombu consume + ack (one consumer, the worker's total prefetch);
2. a no-op Celery task (bench/noop_app.py: the registry's celeryconfig, one task that
   does nothing) under the SAME worker command line as the heartbeat worker;
3. `registry.heartbeat`, one heartbeat per message, drained by a real
   `celery -A workers.app worker` subprocess from a pre-loaded queue;
4. `registry.heartbeat_batch`, 1,000 heartbeats per message (when the checked-out
   registry has the task);
5. a lone heartbeat on an idle worker: send to applied, median of 50.

Once: a raw set-based PostgreSQL UPDATE (`UPDATE workspaces … FROM unnest(…)`) of the
same rows, 1,000 per transaction; and the heartbeat worker's resident memory over a
run at full rate. Each throughput figure is the median of `--reps` repetitions; the
CPU used per process role (worker, postgres, broker, everyone else) is read from /proc
for every phase, which shows what limits a figure on a shared 2-core box.

Drive is by task name through the broker only, so the benchmark measures whichever
registry is checked out. Everything runs in its own PostgreSQL database, its own pair
of Redis databases (reserved like the test suite's) and its own RabbitMQ vhost.

Run: `.venv/bin/python bench/throughput.py` (full, 15-20 min on a busy 2-core box) or
`--quick` (~5 min).
The figures are printed and written into docs/PERFORMANCE.md (`--no-write` to skip);
the raw results are saved as JSON (`--save`), and `--render FILE` rewrites the report
from such a file without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common, procstats  # noqa: E402
from molecule_registry_client import celery_message  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
# Names of this run's own: two runs on one machine never drop each other's database.
RUN_ID = secrets.token_hex(3)
BENCH_DB = f"molecule_registry_throughput_bench_{RUN_ID}"
REDIS_BASE = common.REDIS_BASE
AMQP_BASE = os.environ.get("BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
VHOST = f"molecule_registry_bench_{RUN_ID}"

from molecule_registry_client.names import HEARTBEAT_QUEUE  # noqa: E402

HEARTBEAT_TASK = "registry.heartbeat"
HEARTBEAT_BATCH_TASK = "registry.heartbeat_batch"
BATCH_SIZE = 1000
RAW_QUEUE = "bench.raw"
BROKER_LABELS = {"amqp": "RabbitMQ", "redis": "Redis"}
# Every heartbeat of one phase carries the phase's marker as uptime_seconds: a row is
# "applied" in that phase once it holds the marker (seeded rows hold 0).
_markers = iter(range(1, 1_000_000))


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class WorkerCommand:
    """The heartbeat worker's command line: the same for the no-op and the registry."""

    pool: str
    concurrency: int
    prefetch: int

    def argv(self, app_module: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app_module,
            "worker",
            "-Q",
            HEARTBEAT_QUEUE,
            "--pool",
            self.pool,
            "-c",
            str(self.concurrency),
            "--prefetch-multiplier",
            str(self.prefetch),
            "-l",
            "WARNING",
            "-n",
            f"bench-{uuid.uuid4().hex[:8]}@%h",
        ]

    def describe(self, app_module: str = "workers.app") -> str:
        return (
            f"celery -A {app_module} worker -Q {HEARTBEAT_QUEUE} --pool {self.pool} "
            f"-c {self.concurrency} --prefetch-multiplier {self.prefetch}"
        )


def rabbitmqctl(*args: str, check: bool = True) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError(
            "rabbitmqctl not found: create the vhost yourself or use --brokers redis"
        )
    subprocess.run([ctl, "-q", *args], check=check, capture_output=True, timeout=120)


def fresh_vhost() -> str:
    rabbitmqctl("delete_vhost", VHOST, check=False)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    return f"{AMQP_BASE}/{VHOST}"


# --------------------------------------------------------------------------- messages


class Publisher:
    """One broker connection and producer, publishing by task name to one queue."""

    def __init__(self, broker_url: str, queue: str = HEARTBEAT_QUEUE) -> None:
        from kombu import Connection, Queue

        self.connection = Connection(broker_url)
        self.queue = Queue(queue, routing_key=queue, durable=True)
        self.producer = self.connection.Producer()
        self._declared = False

    def send(self, task_name: str, payload: dict[str, Any]) -> None:
        body, headers, task_id = celery_message(task_name, payload, origin="bench")
        self.producer.publish(
            body,
            exchange="",
            routing_key=self.queue.name,
            serializer="json",
            headers=headers,
            correlation_id=task_id,
            delivery_mode="persistent",
            declare=[] if self._declared else [self.queue],
        )
        self._declared = True

    def depth(self) -> int:
        """Messages waiting in the queue (not counting those a worker holds)."""
        with self.connection.channel() as channel:
            try:
                _, count, _ = self.queue(channel).queue_declare(passive=True)
            except self.connection.channel_errors:
                # Redis keeps no empty queue: a passive declare of one answers 404.
                return 0
        return int(count)

    def purge(self) -> None:
        with self.connection.channel() as channel:
            bound = self.queue(channel)
            bound.declare()
            bound.purge()

    def close(self) -> None:
        self.connection.release()


# --------------------------------------------------------------------------- fleet


@dataclass
class Fleet:
    ids: list[str]
    tokens: list[str]

    def heartbeat(self, index: int, marker: int) -> dict[str, Any]:
        # current_task and active_tasks as seeded: a steady fleet, no TASK_UPDATED.
        return {
            "workspace_id": self.ids[index],
            "auth_token": self.tokens[index],
            "error_rate": 0.01,
            "active_tasks": 1,
            "uptime_seconds": marker,
            "current_task": "serving",
            "monthly_spend": 1200,
        }


def seed_fleet(size: int) -> Fleet:
    """`size` online workspaces, each registered before and holding one live token."""
    # current_task and active_tasks as the heartbeats send them: a steady fleet.
    serving = {"delivery_mode": "'poll'", "active_tasks": "1", "current_task": "'serving'"}
    fleet = common.seed_fleet(size, columns=serving)
    return Fleet(list(fleet), list(fleet.values()))


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    """One measured figure with the CPU each process role used while it ran."""

    rate: float
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)


class CpuWindow:
    """CPU used per process role between start() and stop(); start() may be re-armed.

    Worker phases re-arm it when the first message is applied, so a worker's start-up
    (imports, forking its pool) is not counted against the drain it measures.
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.shares: dict[str, float] = {}
        self._before: procstats.Snapshot | None = None

    def start(self) -> None:
        self._before = procstats.snapshot(set(self.bench.worker_pgids))

    def stop(self) -> None:
        assert self._before is not None
        after = procstats.snapshot(set(self.bench.worker_pgids))
        self.shares = procstats.cpu_shares(
            self._before, after, set(self.bench.worker_pgids), database=BENCH_DB
        )


class Bench:
    def __init__(self, args: argparse.Namespace, command: WorkerCommand) -> None:
        self.args = args
        self.command = command
        self.log_dir = Path(tempfile.mkdtemp(prefix="hbbench-"))
        self.env: dict[str, str] = {}
        self.brokers: dict[str, str] = {}
        self.fleet: Fleet | None = None
        self.batch_available = False
        self.worker_pgids: set[int] = set()

    # -- environment -----------------------------------------------------------

    def worker_env(self, broker: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "CELERY_BROKER_URL": self.brokers[broker],
            "METRICS_PORT": "0",
            "PYTHONPATH": str(ROOT),
        }

    @contextmanager
    def worker(self, app_module: str, broker: str) -> Iterator[subprocess.Popen[bytes]]:
        """A real `celery worker` subprocess in its own process group; stopped on exit."""
        log_path = self.log_dir / f"{app_module}-{broker}-{uuid.uuid4().hex[:6]}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                self.command.argv(app_module),
                cwd=ROOT,
                env=self.worker_env(broker),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.worker_pgids.add(proc.pid)
        try:
            yield proc
        except Exception:
            print(f"--- worker log {log_path} (tail) ---", file=sys.stderr)
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
            raise
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            self.worker_pgids.discard(proc.pid)

    def clear_broker(self, broker: str) -> None:
        """Empty the heartbeat queue (no worker runs between phases)."""
        if broker == "redis":
            import redis

            redis.Redis.from_url(self.brokers["redis"]).flushdb()
        else:
            publisher = Publisher(self.brokers[broker])
            publisher.purge()
            publisher.close()

    @contextmanager
    def measured(self) -> Iterator[CpuWindow]:
        """CPU shares per process role from `window.start()` (or the block's start) to its end."""
        window = CpuWindow(self)
        window.start()
        yield window
        window.stop()

    # -- 1. raw kombu ------------------------------------------------------------

    def raw_kombu(self, broker: str, count: int) -> Phase:
        from kombu import Connection, Consumer, Queue

        url = self.brokers[broker]
        publisher = Publisher(url, RAW_QUEUE)
        publisher.purge()
        payload = self.fleet_or_fail().heartbeat(0, 0)
        for _ in range(count):
            publisher.send(HEARTBEAT_TASK, payload)
        publisher.close()
        prefetch = self.command.concurrency * self.command.prefetch
        seen = {"n": 0, "first": 0.0, "last": 0.0}

        def on_message(body: Any, message: Any) -> None:
            if not seen["n"]:
                seen["first"] = time.perf_counter()
            message.ack()
            seen["n"] += 1
            seen["last"] = time.perf_counter()

        queue = Queue(RAW_QUEUE, routing_key=RAW_QUEUE, durable=True)
        with self.measured() as window, Connection(url) as conn, conn.channel() as channel:
            consumer = Consumer(
                channel,
                [queue],
                callbacks=[on_message],
                accept=["json"],
                prefetch_count=prefetch,
            )
            with consumer:
                deadline = time.monotonic() + 300
                while seen["n"] < count and time.monotonic() < deadline:
                    with suppress(TimeoutError, OSError):
                        conn.drain_events(timeout=1)
        if seen["n"] < count:
            raise RuntimeError(f"raw kombu consumed {seen['n']} of {count}")
        seconds = seen["last"] - seen["first"]
        return Phase((count - 1) / seconds, seconds, window.shares)

    # -- 2. no-op Celery -----------------------------------------------------------

    def noop_celery(self, broker: str, count: int) -> Phase:
        from bench.noop_app import MARK_KEY, NOOP_TASK
        from registry.db import get_redis

        self.clear_broker(broker)
        marks = get_redis()
        marks.delete(MARK_KEY.format(mark="first"), MARK_KEY.format(mark="last"))
        publisher = Publisher(self.brokers[broker])
        fleet = self.fleet_or_fail()
        for n in range(count):
            payload = fleet.heartbeat(n % len(fleet.ids), 0)
            if n in (0, count - 1):
                payload["bench_mark"] = "first" if n == 0 else "last"
            publisher.send(NOOP_TASK, payload)
        publisher.close()
        with self.worker("bench.noop_app", broker), self.measured() as window:
            deadline = time.monotonic() + self.args.timeout
            while not marks.exists(MARK_KEY.format(mark="first")):
                if time.monotonic() > deadline:
                    raise RuntimeError("no-op worker did not start")
                time.sleep(0.01)
            window.start()
            while not marks.exists(MARK_KEY.format(mark="last")):
                if time.monotonic() > deadline:
                    raise RuntimeError("no-op worker did not reach the last message")
                time.sleep(0.05)
            first = float(marks.get(MARK_KEY.format(mark="first")) or 0)
            last = float(marks.get(MARK_KEY.format(mark="last")) or 0)
        seconds = last - first
        return Phase((count - 1) / seconds, seconds, window.shares)

    # -- 3 and 4. the registry -----------------------------------------------------

    def registry_drain(self, broker: str, count: int, batch: int) -> Phase:
        """Pre-load `count` heartbeats (`batch` per message, 0 = per-message task), drain."""
        self.clear_broker(broker)
        fleet = self.fleet_or_fail()
        if count > len(fleet.ids):
            raise RuntimeError(f"fleet of {len(fleet.ids)} is smaller than {count} heartbeats")
        marker = next(_markers)
        publisher = Publisher(self.brokers[broker])
        if batch:
            for start in range(0, count, batch):
                items = [fleet.heartbeat(i, marker) for i in range(start, start + batch)]
                publisher.send(HEARTBEAT_BATCH_TASK, {"heartbeats": items})
        else:
            for i in range(count):
                publisher.send(HEARTBEAT_TASK, fleet.heartbeat(i, marker))
        publisher.close()
        with self.worker("workers.app", broker), self.measured() as window:
            seconds = self.wait_applied(fleet.ids[:count], marker, window)
        return Phase(count / seconds, seconds, window.shares)

    def wait_applied(self, ids: Sequence[str], marker: int, window: CpuWindow) -> float:
        """Seconds from the first heartbeat applied to the last, on the database clock.

        Start: the earliest `last_heartbeat_at` of the phase (its transaction's start).
        End: the database's now() at the first poll that finds every row applied. The
        poll reads only the last-queued rows by primary key (cheap, every 20 ms) and
        counts the whole phase once those are in.
        """
        from sqlalchemy import text

        from registry.db import get_engine

        tail = list(ids[-64:])
        deadline = time.monotonic() + self.args.timeout
        with get_engine().connect() as conn:
            # The CPU window opens when the first of the head rows is applied.
            head = list(ids[:64])
            while not conn.execute(
                text(
                    "SELECT count(*) FROM workspaces "
                    "WHERE id = ANY(CAST(:head AS uuid[])) AND uptime_seconds = :m"
                ),
                {"m": marker, "head": head},
            ).scalar():
                conn.commit()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no heartbeat applied within {self.args.timeout} s")
                time.sleep(0.01)
            conn.commit()
            window.start()
            while True:
                done, db_now = conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE uptime_seconds = :m), now() "
                        "FROM workspaces WHERE id = ANY(CAST(:tail AS uuid[]))"
                    ),
                    {"m": marker, "tail": tail},
                ).one()
                conn.commit()
                if done == len(tail):
                    applied, start = conn.execute(
                        text(
                            "SELECT count(*), min(last_heartbeat_at) FROM workspaces "
                            "WHERE uptime_seconds = :m"
                        ),
                        {"m": marker},
                    ).one()
                    conn.commit()
                    if applied >= len(ids):
                        return (db_now - start).total_seconds()
                    tail = list(ids)  # stragglers elsewhere: watch them all from now on
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"heartbeats not all applied within {self.args.timeout} s "
                        f"(marker {marker}); see the worker log"
                    )
                time.sleep(0.02)

    # -- 5. raw set-based UPDATE ---------------------------------------------------

    def raw_update(self, count: int) -> Phase:
        """The heartbeat's columns written for `count` rows, 1,000 per transaction."""
        from sqlalchemy import text

        from registry.db import get_engine

        fleet = self.fleet_or_fail()
        marker = next(_markers)
        statement = text(
            """
            UPDATE workspaces w SET
                last_heartbeat_at = now(), updated_at = now(),
                last_error_rate = v.error_rate, active_tasks = v.active_tasks,
                uptime_seconds = v.uptime, current_task = v.current_task,
                monthly_spend = v.spend, runtime_metadata = NULL
            FROM unnest(CAST(:ids AS uuid[]), CAST(:error_rates AS float8[]),
                        CAST(:active AS int[]), CAST(:uptimes AS int[]),
                        CAST(:tasks AS text[]), CAST(:spends AS bigint[]))
                 AS v(id, error_rate, active_tasks, uptime, current_task, spend)
            WHERE w.id = v.id
            """
        )
        engine = get_engine()
        with self.measured() as window:
            started = time.perf_counter()
            for start in range(0, count, BATCH_SIZE):
                items = [fleet.heartbeat(i, marker) for i in range(start, start + BATCH_SIZE)]
                with engine.begin() as conn:
                    conn.execute(
                        statement,
                        {
                            "ids": [hb["workspace_id"] for hb in items],
                            "error_rates": [hb["error_rate"] for hb in items],
                            "active": [hb["active_tasks"] for hb in items],
                            "uptimes": [hb["uptime_seconds"] for hb in items],
                            "tasks": [hb["current_task"] for hb in items],
                            "spends": [hb["monthly_spend"] for hb in items],
                        },
                    )
            seconds = time.perf_counter() - started
        return Phase(count / seconds, seconds, window.shares)

    # -- 6. lone heartbeat ---------------------------------------------------------

    def lone_latency(self, broker: str, samples: int) -> list[float]:
        """Milliseconds from publish to applied, one heartbeat at a time on an idle worker."""
        from registry.db import get_engine

        self.clear_broker(broker)
        fleet = self.fleet_or_fail()
        marker = next(_markers)
        publisher = Publisher(self.brokers[broker])
        raw = get_engine().raw_connection()
        raw.autocommit = True
        cursor = raw.cursor()

        def applied(index: int) -> bool:
            cursor.execute(
                "SELECT uptime_seconds FROM workspaces WHERE id = %s", (fleet.ids[index],)
            )
            return cursor.fetchone()[0] == marker

        latencies: list[float] = []
        with self.worker("workers.app", broker):
            # Warm-up (also waits for the worker to be up): not counted.
            for index in range(3):
                publisher.send(HEARTBEAT_TASK, fleet.heartbeat(index, marker))
                self._poll(lambda index=index: applied(index), self.args.timeout)
            for index in range(3, 3 + samples):
                time.sleep(0.25)  # idle: nothing else queued, any batching window expired
                started = time.perf_counter()
                publisher.send(HEARTBEAT_TASK, fleet.heartbeat(index, marker))
                self._poll(lambda index=index: applied(index), 30, interval=0.002)
                latencies.append((time.perf_counter() - started) * 1000)
        publisher.close()
        raw.close()
        return latencies

    @staticmethod
    def _poll(done: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"not applied within {timeout} s")
            time.sleep(interval)

    # -- 7. resident memory at full rate ------------------------------------------

    def rss_run(self, broker: str, seconds: float) -> dict[str, Any]:
        """Keep the queue full for `seconds`; sample the worker group's RSS throughout."""
        self.clear_broker(broker)
        fleet = self.fleet_or_fail()
        stop = threading.Event()
        published = {"heartbeats": 0}
        low, chunk = 1500, 1500
        use_batches = self.batch_available

        def feed() -> None:
            publisher = Publisher(self.brokers[broker])
            marker, n = next(_markers), 0
            while not stop.is_set():
                if publisher.depth() >= low:
                    stop.wait(0.2)
                    continue
                for _ in range(chunk):
                    index = n % len(fleet.ids)
                    n += 1
                    if use_batches and n % 100 == 0:
                        # One batch message of 100 among every 100 messages: both paths run.
                        items = [
                            fleet.heartbeat((index + k) % len(fleet.ids), marker)
                            for k in range(100)
                        ]
                        publisher.send(HEARTBEAT_BATCH_TASK, {"heartbeats": items})
                        published["heartbeats"] += 100
                    else:
                        publisher.send(HEARTBEAT_TASK, fleet.heartbeat(index, marker))
                        published["heartbeats"] += 1
            publisher.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        samples: list[tuple[float, int]] = []
        interval = max(1.0, seconds / 60)
        with self.worker("workers.app", broker) as proc, self.measured() as window:
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                time.sleep(interval)
                samples.append((time.monotonic() - started, procstats.group_rss_kb(proc.pid)))
            stop.set()
            feeder.join(timeout=30)
            publisher = Publisher(self.brokers[broker])
            backlog = publisher.depth()
            publisher.close()
        # Start: the first sample after a warm-up (threads started, connection pool and
        # statement caches filled, the prefetch window full).
        warm = max(10.0, seconds * 0.2)
        steady = [s for s in samples if s[0] >= warm] or samples
        start_kb, end_kb = steady[0][1], steady[-1][1]
        series = [samples[min(len(samples) - 1, i * len(samples) // 5)] for i in range(5)]
        series.append(samples[-1])
        return {
            "series": [(round(t), round(kb / 1024, 1)) for t, kb in series],
            "warm_seconds": warm,
            "broker": broker,
            "seconds": seconds,
            "start_kb": start_kb,
            "end_kb": end_kb,
            "max_kb": max(kb for _, kb in steady),
            "change": (end_kb - start_kb) / start_kb if start_kb else float("nan"),
            "published": published["heartbeats"],
            "backlog_messages": backlog,
            "batches_mixed_in": use_batches,
            "cpu": window.shares,
        }

    def fleet_or_fail(self) -> Fleet:
        if self.fleet is None:
            raise RuntimeError("fleet not seeded")
        return self.fleet


# --------------------------------------------------------------------------- report


def median_phase(phases: list[Phase]) -> Phase:
    """The repetition with the median rate (its CPU shares come with it)."""
    ordered = sorted(phases, key=lambda p: p.rate)
    return ordered[(len(ordered) - 1) // 2]


def fmt_rate(phase: Phase | None) -> str:
    return "n/a" if phase is None else f"{phase.rate:,.0f}"


def ratio(results: dict[str, Any], key: str, over: str) -> str:
    """Median over repetitions of the ratio measured within each repetition."""
    ratios = results.get("ratios", {}).get((key, over))
    return "n/a" if not ratios else f"{statistics.median(ratios):.0%}"


def render(
    args: argparse.Namespace,
    command: WorkerCommand,
    results: dict[str, Any],
    brokers: Sequence[str],
) -> str:
    reps = args.reps
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`.venv/bin/python bench/throughput.py{' --quick' if args.quick else ''}` on this "
        f"project's {procstats.CORES}-core machine (PostgreSQL, RabbitMQ, Redis and the "
        "worker on one box, shared with other work). Throughput figures are the median of "
        f"{reps} repetition(s); fleet {args.fleet:,} workspaces with tokens; "
        f"{args.messages:,} messages per per-message run, {args.batch_heartbeats:,} "
        f"heartbeats per batch run ({BATCH_SIZE:,} per message).",
        "",
        f"Worker command line (registry and no-op alike): `{command.describe()}`; "
        f"celeryconfig as checked out (acks late, reject on worker lost). Raw kombu uses "
        f"one consumer with prefetch {command.concurrency * command.prefetch} "
        "(the worker's total).",
        "",
        "| figure (per second) | " + " | ".join(BROKER_LABELS[b] for b in brokers) + " | target |",
        "|---|" + "---:|" * len(brokers) + "---|",
    ]

    def row(label: str, cells: list[str], target: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    get = results.get
    row("raw kombu consume + ack (messages)", [fmt_rate(get(f"raw_kombu_{b}")) for b in brokers])
    row("no-op Celery task (messages)", [fmt_rate(get(f"noop_{b}")) for b in brokers])
    row("`registry.heartbeat`, one per message", [fmt_rate(get(f"per_msg_{b}")) for b in brokers])
    row(
        "per-message / no-op Celery",
        [ratio(results, f"per_msg_{b}", f"noop_{b}") for b in brokers],
        "RabbitMQ ≥ 70%, Redis ≥ 80%",
    )
    row(
        f"`registry.heartbeat_batch`, {BATCH_SIZE:,} per message (heartbeats)",
        [fmt_rate(get(f"batch_{b}")) for b in brokers],
        "≥ 10,000",
    )
    raw = get("raw_update")
    row(
        "batch / raw set-based UPDATE",
        [ratio(results, f"batch_{b}", "raw_update") for b in brokers],
        "≥ 50%",
    )
    row(
        f"lone heartbeat on an idle worker, median of {args.lone_samples} (ms; p90 in brackets)",
        [
            "n/a"
            if not get(f"lone_{b}")
            else f"{statistics.median(get(f'lone_{b}')):.1f} "
            f"({statistics.quantiles(get(f'lone_{b}'), n=10)[-1]:.1f})"
            for b in brokers
        ],
        "≤ 100 ms",
    )
    lines += [
        "",
        f"- Raw set-based PostgreSQL UPDATE (`UPDATE workspaces … FROM unnest(…)`, same "
        f"rows and columns, {BATCH_SIZE:,} rows per transaction, one connection): "
        f"**{fmt_rate(raw)} rows/s**.",
    ]
    rss = get("rss")
    if rss:
        lines.append(
            f"- Heartbeat worker resident memory (whole process group) over "
            f"{rss['seconds']:.0f} s at full rate on {BROKER_LABELS[rss['broker']]}"
            f"{' (per-message and batch messages mixed)' if rss['batches_mixed_in'] else ''}: "
            f"{rss['start_kb'] / 1024:.1f} MiB after warm-up → {rss['end_kb'] / 1024:.1f} MiB "
            f"at the end (**{rss['change']:+.1%}**, max {rss['max_kb'] / 1024:.1f} MiB; "
            f"target ±10%); {rss['published']:,} heartbeats published, "
            f"{rss['backlog_messages']:,} messages left queued. Samples (s: MiB): "
            + ", ".join(f"{t}: {mib}" for t, mib in rss["series"])
            + f"; warm-up before the start figure: {rss['warm_seconds']:.0f} s."
        )
    if not results.get("batch_available"):
        lines.append(
            "- `registry.heartbeat_batch` is not registered by the checked-out worker: "
            "batch figures are n/a."
        )
    lines += [
        "",
        "CPU used per process role during each phase (median repetition; "
        f"{procstats.CORES}.00 = every core busy; `other` is everything else on the box):",
        "",
    ]
    for key, label in _phase_labels(brokers):
        phase = get(key)
        if isinstance(phase, Phase) and phase.cpu:
            lines.append(f"- {label}: {procstats.format_shares(phase.cpu)}")
    if rss and rss.get("cpu"):
        lines.append(f"- memory run: {procstats.format_shares(rss['cpu'])}")
    lines += capacity_lines(results, brokers)
    return "\n".join(lines)


FLEETS = (10_000, 100_000, 1_000_000)
HEARTBEAT_INTERVAL_SECONDS = 30


def capacity_lines(results: dict[str, Any], brokers: Sequence[str]) -> list[str]:
    """CPU cost per heartbeat as measured, scaled linearly to fleets at one per 30 s.

    Measured: cores each process role used per 1,000 heartbeats/s during a drain.
    Extrapolated: that the cost per heartbeat stays the same on more cores and boxes.
    """
    roles = ("worker", "postgres", "rabbitmq", "redis")
    lines = [
        "",
        "Capacity model: cores per role = heartbeats/s times the cores that role used per "
        "heartbeat/s in the median drain above (CPU time, so waiting for a CPU on this "
        "busy box does not count). Cells are worker / PostgreSQL / RabbitMQ / Redis "
        "cores, with no headroom; with the Redis broker its column holds broker and "
        "data use together. Everything beyond this box is a linear extrapolation (see "
        "docs/OPERATIONS.md, capacity).",
        "",
        "| path, broker | measured, per 1,000 hb/s | "
        + " | ".join(f"{f:,} agents ({f // HEARTBEAT_INTERVAL_SECONDS:,} hb/s)" for f in FLEETS)
        + " |",
        "|---|---|" + "---|" * len(FLEETS),
    ]
    for key_prefix, label in (("per_msg", "per message"), ("batch", "batch of 1,000")):
        for broker in brokers:
            phase = results.get(f"{key_prefix}_{broker}")
            if not isinstance(phase, Phase) or not phase.cpu or phase.rate <= 0:
                continue
            per_khb = [phase.cpu.get(role, 0.0) / phase.rate * 1000 for role in roles]
            cells = [" / ".join(f"{c:.2f}" for c in per_khb)]
            for fleet in FLEETS:
                load = fleet / HEARTBEAT_INTERVAL_SECONDS / 1000
                cells.append(" / ".join(f"{c * load:.1f}" for c in per_khb))
            lines.append(f"| {label}, {BROKER_LABELS[broker]} | " + " | ".join(cells) + " |")
    return lines


def _phase_labels(brokers: Sequence[str]) -> list[tuple[str, str]]:
    labels: list[tuple[str, str]] = []
    for b in brokers:
        name = BROKER_LABELS[b]
        labels += [
            (f"raw_kombu_{b}", f"raw kombu, {name}"),
            (f"noop_{b}", f"no-op Celery, {name}"),
            (f"per_msg_{b}", f"registry.heartbeat, {name}"),
            (f"batch_{b}", f"registry.heartbeat_batch, {name}"),
        ]
    labels.append(("raw_update", "raw UPDATE"))
    return labels


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs for development")
    parser.add_argument("--brokers", default="amqp,redis", help="comma list: amqp, redis")
    parser.add_argument("--pool", default=os.environ.get("BENCH_HB_POOL", "prefork"))
    parser.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("BENCH_HB_CONCURRENCY", "2"))
    )
    parser.add_argument(
        "--prefetch", type=int, default=int(os.environ.get("BENCH_HB_PREFETCH", "200"))
    )
    parser.add_argument("--reps", type=int, help="repetitions per figure (median quoted)")
    parser.add_argument("--messages", type=int, help="messages per per-message run")
    parser.add_argument("--batch-heartbeats", type=int, help="heartbeats per batch run")
    parser.add_argument("--lone-samples", type=int, default=50)
    parser.add_argument("--rss-seconds", type=float, help="memory run length")
    parser.add_argument("--rss-broker", default="amqp", choices=["amqp", "redis"])
    parser.add_argument("--timeout", type=float, default=300, help="per phase")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument(
        "--save",
        default=str(Path(tempfile.gettempdir()) / "hbbench-last.json"),
        help="where the raw results go (JSON), to re-render them with --render",
    )
    parser.add_argument("--render", help="render saved results (JSON) instead of measuring")
    args = parser.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (2 if quick else 3)
    args.messages = args.messages or (2_000 if quick else 6_000)
    args.batch_heartbeats = args.batch_heartbeats or (5_000 if quick else 20_000)
    args.batch_heartbeats -= args.batch_heartbeats % BATCH_SIZE
    args.rss_seconds = args.rss_seconds if args.rss_seconds is not None else (40 if quick else 300)
    args.fleet = max(args.messages, args.batch_heartbeats, args.lone_samples + 3)
    return args


def save_results(path: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    def encode(value: Any) -> Any:
        if isinstance(value, Phase):
            return {
                "__phase__": True,
                "rate": value.rate,
                "seconds": value.seconds,
                "cpu": value.cpu,
            }
        return value

    data = {key: encode(value) for key, value in results.items() if key != "ratios"}
    data["ratios"] = {"|".join(k): v for k, v in results.get("ratios", {}).items()}
    saved_args = {k: v for k, v in vars(args).items() if k not in ("render",)}
    Path(path).write_text(json.dumps({"args": saved_args, "results": data}, indent=1))


def load_results(path: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    raw = json.loads(Path(path).read_text())
    results: dict[str, Any] = {}
    for key, value in raw["results"].items():
        if isinstance(value, dict) and value.get("__phase__"):
            results[key] = Phase(value["rate"], value["seconds"], value["cpu"])
        else:
            results[key] = value
    results["ratios"] = {tuple(k.split("|")): v for k, v in raw["results"]["ratios"].items()}
    if results.get("rss"):
        results["rss"]["series"] = [tuple(s) for s in results["rss"]["series"]]
    return argparse.Namespace(**raw["args"]), results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        saved_args, results = load_results(args.render)
        saved_args.no_write = args.no_write
        publish(saved_args, results)
        return
    command = WorkerCommand(args.pool, args.concurrency, args.prefetch)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    data_db, broker_db, lock = common.reserve_redis_dbs(REDIS_BASE)
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    bench = Bench(args, command)
    bench.env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": f"{REDIS_BASE}/{data_db}",
        "CELERY_RESULT_BACKEND": f"{REDIS_BASE}/{data_db}",
        "CELERY_BROKER_URL": f"{REDIS_BASE}/{broker_db}",
    }
    os.environ.update(bench.env)  # before any registry module reads its settings
    if "redis" in brokers:
        bench.brokers["redis"] = f"{REDIS_BASE}/{broker_db}"
    print(
        f"settings: {command.describe()}; brokers {brokers}; reps {args.reps}; "
        f"fleet {args.fleet}; Redis dbs {data_db}/{broker_db}; database {BENCH_DB}; "
        f"vhost {VHOST}; worker logs {bench.log_dir}",
        flush=True,
    )
    results: dict[str, Any] = {}
    try:
        if "amqp" in brokers:
            bench.brokers["amqp"] = fresh_vhost()
        from registry.db import get_redis

        common.create_database(BENCH_DB, PG_ADMIN_URL)
        get_redis().flushdb()
        bench.fleet = seed_fleet(args.fleet)
        bench.batch_available = batch_task_registered()
        results["batch_available"] = bench.batch_available
        results.update(run_all(bench, brokers))
    finally:
        from registry.db import get_redis

        with suppress(Exception):
            get_redis().flushdb()
            get_redis(bench.brokers.get("redis", bench.env["REDIS_URL"])).flushdb()
        with suppress(Exception):
            common.drop_database(BENCH_DB, PG_ADMIN_URL)
        if "amqp" in brokers:
            with suppress(Exception):
                rabbitmqctl("delete_vhost", VHOST, check=False)
        lock.close()
    save_results(args.save, args, results)
    publish(args, results)


def publish(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Print the report and write it into docs/PERFORMANCE.md."""
    command = WorkerCommand(args.pool, args.concurrency, args.prefetch)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    section = render(args, command, results, brokers)
    print()
    print(section)
    if not args.no_write:
        common.write_section(common.PERFORMANCE_MD, "bench/throughput.py", section)
        print("\nwritten into docs/PERFORMANCE.md")


def batch_task_registered() -> bool:
    from workers.app import app

    app.loader.import_default_modules()
    return HEARTBEAT_BATCH_TASK in app.tasks


def run_all(bench: Bench, brokers: Sequence[str]) -> dict[str, Any]:
    args = bench.args
    runs: dict[str, list[Phase]] = {}

    def record(key: str, phase: Phase) -> None:
        runs.setdefault(key, []).append(phase)
        print(
            f"  {key}: {phase.rate:,.0f}/s over {phase.seconds:.2f} s; "
            f"{procstats.format_shares(phase.cpu)}",
            flush=True,
        )

    for rep in range(args.reps):
        print(f"repetition {rep + 1} of {args.reps}", flush=True)
        for broker in brokers:
            record(f"raw_kombu_{broker}", bench.raw_kombu(broker, args.messages))
            record(f"noop_{broker}", bench.noop_celery(broker, args.messages))
            record(f"per_msg_{broker}", bench.registry_drain(broker, args.messages, 0))
            if bench.batch_available:
                record(
                    f"batch_{broker}",
                    bench.registry_drain(broker, args.batch_heartbeats, BATCH_SIZE),
                )
        record("raw_update", bench.raw_update(args.batch_heartbeats))
    results: dict[str, Any] = {key: median_phase(phases) for key, phases in runs.items()}
    # Ratios are taken within each repetition (phases minutes apart share the box's
    # mood), then the median of those is quoted.
    ratios: dict[tuple[str, str], list[float]] = {}
    for broker in brokers:
        for key, over in (
            (f"per_msg_{broker}", f"noop_{broker}"),
            (f"batch_{broker}", "raw_update"),
        ):
            pairs = zip(runs.get(key, []), runs.get(over, []), strict=False)
            ratios[(key, over)] = [a.rate / b.rate for a, b in pairs]
            print(
                f"  {key} / {over} per repetition: "
                + ", ".join(f"{r:.0%}" for r in ratios[(key, over)]),
                flush=True,
            )
    results["ratios"] = ratios
    for broker in brokers:
        latencies = bench.lone_latency(broker, args.lone_samples)
        results[f"lone_{broker}"] = latencies
        print(f"  lone_{broker}: median {statistics.median(latencies):.1f} ms", flush=True)
    rss_broker = args.rss_broker if args.rss_broker in brokers else brokers[0]
    if args.rss_seconds > 0:
        results["rss"] = bench.rss_run(rss_broker, args.rss_seconds)
        print(f"  rss: {json.dumps({k: v for k, v in results['rss'].items() if k != 'cpu'})}")
    return results


if __name__ == "__main__":
    main()
